"""PEFT's own data-driven LoRA inits as peers in the benchmark: EVA, CorDA and LoRA-GA read the run's training
data; PiSSA, OLoRA, CorDA and LoRA-GA move part of the base weights into the adapter (`W = W_res + s·B₀A₀`).

Each init goes through PEFT's public API. Adapters of the base-changing inits are saved with PEFT's documented
conversion (`save_pretrained(..., path_initial_model_for_weight_conversion=...)`): the saved adapter is the plain
LoRA `[A | A₀], [B | -B₀]` of rank 2r, which loads on the *original* base model with plain PEFT."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, initialize_lora_eva_weights, preprocess_loraga
from peft.tuners.lora.corda import preprocess_corda  # not exported at the top level in peft 0.21
from torch import nn

# warnings these inits raise on every run, by design (not about the user's setup): kept out of the bench's output
EXPECTED_WARNINGS = (
    r"(PiSSA|CorDA|OLoRA|LoRA-GA) changes the base weights",  # at save time, where PEFT's conversion is what we do
    r"`corda_config` specified but will be ignored",  # the conversion builds a plain LoRA config from ours
    r"Full backward hook is firing when gradients are computed with respect to module outputs",  # LoRA-GA's hooks
)
BASE_CHANGING = ("pissa", "olora", "corda", "lora_ga")  # `init_lora_weights` values that rewrite the base weights
_INITIAL = "peft_sails_initial_adapter"  # attribute of a PeftModel: where its initial adapter was saved


def chat_batches(tokenizer: Any, data: Any, batch_size: int = 16, labels: bool = False) -> list[dict]:
    """The chat rows of `data` (column `messages`) through the tokenizer's chat template, in order, as right-padded
    batches (`input_ids`, `attention_mask`, and with `labels` the input ids with padding set to -100: the causal-LM
    loss TRL's SFT uses on chat data). Deterministic; the template writes the special tokens itself."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = [tokenizer.apply_chat_template(row["messages"], tokenize=False) for row in data]
    batches = []
    for start in range(0, len(texts), batch_size):
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[start:start + batch_size]]
        width = max(map(len, ids))
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if labels:
            batch["labels"] = input_ids.masked_fill(mask == 0, -100)
        batches.append(batch)
    return batches


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def eva_model(model: nn.Module, config: LoraConfig, tokenizer: Any, data: Any) -> PeftModel:
    """EVA (`init_lora_weights="eva"`): `lora_A` = the leading right-singular vectors of each target module's inputs
    on `data` (incremental SVD over the batches until they converge), B = 0, ranks redistributed across modules by
    explained variance under `config.eva_config` (PEFT's defaults: `rho=2`, so a module gets 0..2r, same budget)."""
    peft_model = get_peft_model(model, config, low_cpu_mem_usage=True)  # A is left empty until EVA writes it
    initialize_lora_eva_weights(peft_model, chat_batches(tokenizer, data), show_progress_bar=False)
    return peft_model


def corda_model(model: nn.Module, config: LoraConfig, tokenizer: Any, data: Any) -> PeftModel:
    """CorDA (`init_lora_weights="corda"`): SVD of each weight times the covariance of its inputs on `data`
    (`config.corda_config`; "ipm" keeps the leading components, oriented by the task). PEFT's hook reads one example
    per forward pass, so the rows run one at a time. Memory: one `[in, in]` covariance per target module."""
    device = next(model.parameters()).device

    def run_model() -> None:
        for batch in chat_batches(tokenizer, data, batch_size=1):
            model(**_to(batch, device))

    preprocess_corda(model, config, run_model=run_model)
    return get_peft_model(model, config)


def loraga_model(model: nn.Module, config: LoraConfig, tokenizer: Any, data: Any, batch_size: int = 16) -> PeftModel:
    """LoRA-GA (`init_lora_weights="lora_ga"`): A and B from the SVD of each target weight's gradient of the
    causal-LM loss on `data` (averaged over batches of `batch_size`; `config.lora_ga_config` gives how the singular
    vectors are split and scaled). Memory: one gradient per target weight."""
    device = next(model.parameters()).device

    def train_step() -> None:
        for batch in chat_batches(tokenizer, data, batch_size, labels=True):
            model(**_to(batch, device)).loss.backward()

    with _expected_warnings_off():
        preprocess_loraga(model, config, train_step=train_step)
    return get_peft_model(model, config)


def keep_initial_adapter(peft_model: PeftModel) -> None:
    """Save the adapter as it is right after a base-changing init, before any training, into a temporary folder
    (removed with the model, or at exit), so that `save_converted` can write a plain LoRA."""
    folder = tempfile.mkdtemp(prefix="peft-sails-initial-")
    weakref.finalize(peft_model, shutil.rmtree, folder, ignore_errors=True)
    peft_model.save_pretrained(str(Path(folder) / "initial"))
    setattr(peft_model, _INITIAL, str(Path(folder) / "initial"))


def save_converted(peft_model: PeftModel, save_dir: Path) -> None:
    """Save a trained adapter. After a base-changing init, PEFT converts it against the initial adapter into a
    plain LoRA of rank 2r (`[A | A₀]`, `[B | -B₀]`) for the original base weights; otherwise it is saved as is."""
    initial = getattr(peft_model, _INITIAL, None)
    with _expected_warnings_off():
        peft_model.save_pretrained(str(save_dir), path_initial_model_for_weight_conversion=initial)


@contextlib.contextmanager
def _expected_warnings_off() -> Iterator[None]:
    """A context in which `EXPECTED_WARNINGS` are not shown (others are)."""
    with warnings.catch_warnings():
        for message in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield
