"""Load a saved SAILS adapter with its metadata (the adapter itself is plain LoRA)."""

from __future__ import annotations

from typing import Any

from peft import PeftModel
from torch import nn

from .config import SAILSConfig


def load_sails_adapter(model: nn.Module, model_id: str, **kwargs: Any) -> tuple[PeftModel, SAILSConfig]:
    """`PeftModel.from_pretrained(model, model_id, **kwargs)` plus the adapter's `SAILSConfig` (chosen features,
    SAE release and ids, subspace statistics) read from its `sails_config.json`. Works for local folders and Hub repos.
    """
    sails_config = SAILSConfig.from_pretrained(model_id, subfolder=kwargs.get("subfolder"),
                                               revision=kwargs.get("revision"), token=kwargs.get("token"))
    peft_model = PeftModel.from_pretrained(model, model_id, **kwargs)
    return peft_model, sails_config
