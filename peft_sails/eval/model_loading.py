"""Load the model under test (base, base + PEFT adapter, or merged) and judge models, by Hub id or local path,
with errors that say which id failed and whether offline mode is on."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from huggingface_hub import is_offline_mode
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import cached_file

T = TypeVar("T")


def resolve_device(device: str | None) -> torch.device:
    """`None`/"auto": the first CUDA device when there is one, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str) -> str | torch.dtype:
    """"auto" (the checkpoint's dtype) or a torch dtype name such as "bfloat16"."""
    if dtype == "auto":
        return dtype
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}: use 'auto' or a torch dtype name such as 'bfloat16' or 'float32'.")
    return value


def from_hub_or_path(load: Callable[..., T], model_id: str, what: str, **kwargs: Any) -> T:
    """`load(model_id, **kwargs)`; a missing model becomes a FileNotFoundError naming `what` and `model_id`, and
    saying whether HF_HUB_OFFLINE is set (never a silent fallback to another model)."""
    try:
        return load(model_id, **kwargs)
    except (OSError, ValueError) as err:  # not found, gated, or not cached offline (peft raises ValueError)
        if os.path.isdir(model_id):
            raise
        hint = (
            "HF_HUB_OFFLINE is set (offline mode is on), so only the local Hugging Face cache was searched: download "
            f"it once with a network (`hf download {model_id}`) or pass a local folder."
            if is_offline_mode()
            else "Check the id (and `hf auth login` if the repo is gated), or pass a local folder."
        )
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise FileNotFoundError(f"Could not load the {what} {model_id!r} ({reason}). {hint}") from err


def base_model_of(adapter: str) -> str:
    """The base model id recorded in a PEFT adapter's config."""
    from peft import PeftConfig

    config = from_hub_or_path(PeftConfig.from_pretrained, adapter, "adapter")
    if not config.base_model_name_or_path:
        raise ValueError(f"The adapter {adapter!r} does not record its base model; pass --model.")
    return config.base_model_name_or_path


def load_model_for_eval(model_id: str | None = None, adapter: str | None = None, merge: bool = False,
                        dtype: str = "auto", device: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode: a causal LM, optionally with a PEFT adapter on top (merged into the weights
    with `merge=True`). Without `model_id` the adapter's base model is used. The tokenizer comes from the adapter
    folder when it has one (adapters trained with new chat tokens save it), else from the model."""
    if model_id is None:
        if adapter is None:
            raise ValueError("Give a model id or path, an adapter, or both.")
        model_id = base_model_of(adapter)
    model = from_hub_or_path(AutoModelForCausalLM.from_pretrained, model_id, "model", dtype=resolve_dtype(dtype),
                             device_map=str(resolve_device(device)))
    tokenizer = None
    if adapter is not None:
        from peft import PeftModel

        model = from_hub_or_path(lambda a: PeftModel.from_pretrained(model, a), adapter, "adapter")
        if cached_file(adapter, "tokenizer_config.json", _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False):
            tokenizer = AutoTokenizer.from_pretrained(adapter)
        if merge:
            model = model.merge_and_unload()
    if tokenizer is None:
        tokenizer = from_hub_or_path(AutoTokenizer.from_pretrained, model_id, "tokenizer")
    return model.eval(), tokenizer
