"""The methods the benchmark compares, and how each one turns the base model into a trainable model."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from torch import nn

from ..config import DEFAULT_READERS, DEFAULT_WRITERS, SAILSConfig
from ..controls import direct_subspace, random_subspace
from ..initialization import apply_subspace
from ..selection import select_features
from ..subspace import Subspace
from .world import World

Kind = Literal["lora", "sails", "direct", "random", "full"]
TARGETS = DEFAULT_READERS + DEFAULT_WRITERS


@dataclass(frozen=True)
class Method:
    """One arm of the comparison. `sails` holds `SAILSConfig` overrides (also read by `direct`/`random`, which
    scale and place their basis like SAILS); `contrast` says what stage 1 compares: "response" (the paper: the same
    harmful requests answered with refusals vs compliance) or "prompt" (harmful vs benign requests)."""

    name: str
    kind: Kind
    help: str
    sails: dict[str, Any] = field(default_factory=dict)
    contrast: Literal["response", "prompt"] = "response"
    freeze_a: bool = False  # diagnostic: the readers' lora_A (the subspace) stays fixed, only lora_B trains
    lr_of: str | None = None  # use this method's swept learning rate instead of sweeping again


METHODS = {m.name: m for m in [
    Method("lora", "lora", "plain LoRA, PEFT's default init (kaiming-uniform A, B = 0)"),
    Method("sails", "sails", "SAILS as in the paper: response contrast, response tokens, top-64 per layer, 80% variance"),
    Method("direct", "direct", "same pipeline, directions = residual activation differences (no SAE)"),
    Method("random", "random", "random orthonormal basis, same scale and placement as SAILS"),
    Method("full", "full", "full fine-tuning of every weight"),
    Method("sails-prompt", "sails", "SAILS, features contrasting harmful vs benign prompts (prompt tokens)",
           sails={"token_scope": "prompt"}, contrast="prompt"),
    Method("sails-last-prompt", "sails", "SAILS, paper contrast at the last prompt token (where the answer is decided)",
           sails={"token_scope": "last_prompt"}, lr_of="sails"),
    Method("sails-minfire", "sails", "SAILS, features must fire on >= 1% of scored tokens (no rare rho=1 features)",
           sails={"min_firing_rate": 0.01}, lr_of="sails"),
    Method("sails-layer1", "sails", "SAILS with the layer-1 SAE only", sails={"layers": [1]}, lr_of="sails"),
    Method("sails-k16", "sails", "SAILS, top-16 features per layer", sails={"top_k": 16}, lr_of="sails"),
    Method("sails-var50", "sails", "SAILS, basis = directions for 50% variance, the rest random",
           sails={"variance_threshold": 0.5, "subspace_fill": "random"}, lr_of="sails"),
    Method("sails-a1", "sails", "SAILS, basis vectors of norm 1 (PEFT's A rows have norm 0.58)",
           sails={"a_scale": 1.0}, lr_of="sails"),
    Method("sails-writer-lora", "sails", "SAILS on readers only; o/down keep LoRA's default init",
           sails={"writer_init": "lora"}, lr_of="sails"),
    Method("sails-frozen-a", "sails", "diagnostic: SAILS with the readers' A frozen (train B inside the subspace)",
           freeze_a=True, lr_of="sails"),
    Method("random-frozen-a", "random", "diagnostic: random basis with the readers' A frozen", freeze_a=True,
           lr_of="random"),
]}


def selection_data(world_corpus: Any, contrast: str, n: int = 256) -> tuple[Dataset, Dataset]:
    """(aligned, unaligned) chat data for stage 1: refusals vs compliance on harmful requests, or harmful vs
    benign requests."""
    aligned = world_corpus["align_pool"].select(range(n)).select_columns(["messages"])
    other = world_corpus["unaligned" if contrast == "response" else "benign_pool"]
    return aligned, other.select(range(min(n, len(other)))).select_columns(["messages"])


def sails_config(world: World, method: Method, r: int, lora_alpha: int) -> SAILSConfig:
    overrides = dict(method.sails)
    layers = overrides.pop("layers", sorted(world.sae_ids))
    return SAILSConfig(r=r, lora_alpha=lora_alpha, target_modules=list(TARGETS), sae_release=world.sae_repo,
                       sae_ids={layer: world.sae_ids[layer] for layer in layers}, **{"top_k": 64, **overrides})


@dataclass
class Prepared:
    """What a method needs before its runs, computed once per method (stage 1 and 2 do not depend on the seed)."""

    r: int
    lora_alpha: int
    config: SAILSConfig | None = None
    subspace: Subspace | None = None


def prepare(method: Method, world: World, model: nn.Module, tokenizer: Any, corpus: Any, r: int,
            lora_alpha: int) -> Prepared:
    """Stage 1 (SAILS: feature selection) or the direct subspace; nothing for lora, random and full."""
    if method.kind not in ("sails", "direct"):
        return Prepared(r, lora_alpha, sails_config(world, method, r, lora_alpha) if method.kind == "random" else None)
    config = sails_config(world, method, r, lora_alpha)
    aligned, unaligned = selection_data(corpus, method.contrast)
    if method.kind == "direct":
        return Prepared(r, lora_alpha, config, direct_subspace(model, tokenizer, config, aligned, unaligned))
    return Prepared(r, lora_alpha, select_features(model, tokenizer, config, aligned, unaligned, show_progress=False))


def trainable_model(method: Method, prepared: Prepared, base: nn.Module, seed: int) -> nn.Module:
    """A fresh trainable model for one run (`base` is copied, never modified)."""
    model = copy.deepcopy(base)
    torch.manual_seed(seed)  # LoRA's default init of A
    if method.kind == "full":
        return model
    if method.kind == "lora":
        return get_peft_model(model, LoraConfig(r=prepared.r, lora_alpha=prepared.lora_alpha,
                                                target_modules=list(TARGETS)))
    config = copy.deepcopy(prepared.config)
    if method.kind == "sails":
        peft_model = get_peft_model(model, config)
    else:  # direct / random: a plain LoRA adapter with the control basis written in, scaled like SAILS
        peft_model = get_peft_model(model, LoraConfig(r=prepared.r, lora_alpha=prepared.lora_alpha,
                                                      target_modules=list(TARGETS)))
        subspace = prepared.subspace or random_subspace(base.config.hidden_size, config.r, seed)
        apply_subspace(peft_model, "default", config, subspace, {"source": method.kind})
    if method.freeze_a:
        for name, param in peft_model.named_parameters():
            if "lora_A" in name and any(f".{m}." in name for m in config.reader_modules):
                param.requires_grad_(False)
    return peft_model
