"""`SailsModel`: PEFT's `LoraModel`, with SAILS initialisation after the adapters are injected."""

from __future__ import annotations

import copy
import logging

from peft.tuners.lora import LoraLayer, LoraModel
from torch import nn

from .config import SAILSConfig
from .initialization import apply_subspace, compute_sails_subspace, write_sails_weights
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

    Stage 1 runs here only if the config names its selection data and has no `features` yet (or, with
    `benign_dataset`, no `reader_features` yet). With `low_cpu_mem_usage=True` the adapter weights stay on the meta
    device until `initialize_sails_weights`.
    """

    prefix: str = "lora_"

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs) -> None:
        # Both get_peft_model and PeftModel.add_adapter come through here (the pre/post-injection hooks only
        # run for the first adapter), so every SAILS adapter is selected (if needed) and initialised. Everything
        # that can fail on bad input (data, SAEs, fit to the model) runs before the model is touched.
        config: SAILSConfig = self.peft_config[adapter_name]
        if config.features is None and config.aligned_dataset is None:
            raise ValueError(_NO_FEATURES)
        # stage 1 for what is not selected yet: features, and reader_features when benign_dataset is named
        select_features_from_config(model, config, overwrite=False)
        # get_peft_model(low_cpu_mem_usage=True) injects under accelerate's init_empty_weights: new parameters
        # (the SAEs' too) land on the meta device, so initialisation waits for initialize_sails_weights.
        empty_init = nn.Linear(1, 1, device="cpu").weight.is_meta or kwargs.get("low_cpu_mem_usage", False)
        materialized = any(p.device.type != "meta" for p in model.parameters())
        subspace, stats = compute_sails_subspace(model, config) if materialized and not empty_init else (None, None)
        super().inject_adapter(model, adapter_name, **kwargs)
        on_meta = any(
            m.lora_A[adapter_name].weight.is_meta
            for m in model.modules()
            if isinstance(m, LoraLayer) and adapter_name in m.lora_A
        )
        if subspace is None or on_meta:  # low_cpu_mem_usage=True or a meta model: initialise later
            logger.info("SAILS: adapter weights are on the meta device; call initialize_sails_weights(model) next.")
            return
        apply_subspace(model, adapter_name, config, subspace, stats)
        self.__dict__.setdefault("_sails_subspaces", {})[adapter_name] = subspace

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        # PeftModel upcasts half-precision adapters to float32 after injection: write the basis again, so a bf16
        # model's float32 adapter holds the exact basis and not its bf16 rounding.
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
        subspace = self.__dict__.get("_sails_subspaces", {}).pop(adapter_name, None)
        if subspace is not None:
            write_sails_weights(self.model, adapter_name, self.peft_config[adapter_name], subspace)

    def _create_and_replace(self, lora_config: SAILSConfig, *args, **kwargs) -> None:
        stock = copy.copy(lora_config)
        stock.init_lora_weights = True  # stock LoRA layers do not know "sails"
        super()._create_and_replace(stock, *args, **kwargs)
