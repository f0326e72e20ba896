"""`SailsModel`: PEFT's `LoraModel`, with SAILS initialisation after the adapters are injected."""

from __future__ import annotations

import copy
import logging

from peft.tuners.lora import LoraLayer, LoraModel
from torch import nn

from .config import SAILSConfig
from .initialization import initialize_sails_weights
from .selection import select_features_from_config

logger = logging.getLogger(__name__)

_NO_FEATURES = (
    "SAILSConfig.features is not set, and the config names no selection data. Either run stage 1 first:\n"
    "    config = peft_sails.select_features(model, tokenizer, config, aligned=aligned_ds, unaligned=unaligned_ds)\n"
    "or name the data in the config: SAILSConfig(..., aligned_dataset='org/refusals', "
    "unaligned_dataset='org/compliances', dataset_split='train')."
)


class SailsModel(LoraModel):
    """LoRA layers created with PEFT's default init, then re-initialised in the SAILS subspace.

    Stage 1 runs here only if the config names its selection data and has no `features` yet. With
    `low_cpu_mem_usage=True` the adapter weights stay on the meta device until `initialize_sails_weights`.
    """

    prefix: str = "lora_"

    def _pre_injection_hook(self, model: nn.Module, config: SAILSConfig, adapter_name: str) -> None:
        super()._pre_injection_hook(model, config, adapter_name)
        if config.features is None:
            if config.aligned_dataset is None:
                raise ValueError(_NO_FEATURES)
            select_features_from_config(model, config)

    def _create_and_replace(self, lora_config: SAILSConfig, *args, **kwargs) -> None:
        stock = copy.copy(lora_config)
        stock.init_lora_weights = True  # stock LoRA layers do not know "sails"
        super()._create_and_replace(stock, *args, **kwargs)

    def _post_injection_hook(self, model: nn.Module, config: SAILSConfig, adapter_name: str) -> None:
        super()._post_injection_hook(model, config, adapter_name)
        on_meta = any(
            m.lora_A[adapter_name].weight.is_meta
            for m in model.modules()
            if isinstance(m, LoraLayer) and adapter_name in m.lora_A
        )
        if on_meta:
            logger.info("SAILS: adapter weights are on the meta device; call initialize_sails_weights(model) next.")
            return
        initialize_sails_weights(model, adapter_name, config=config)
