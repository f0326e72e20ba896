"""The methods the benchmark compares, and how each one turns the base model into a trainable model."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from datasets import Dataset
from peft import EvaConfig, LoraConfig, LoraGAConfig, get_peft_model
from peft.tuners.lora.config import CordaConfig
from torch import nn

from ..config import DEFAULT_READERS, DEFAULT_WRITERS, SAILSConfig
from ..controls import direct_subspace, random_subspace, refusal_direction_subspace
from ..initialization import apply_subspace
from ..selection import select_features, select_reader_features
from ..subspace import Subspace
from .peers import BASE_CHANGING, corda_model, eva_model, keep_initial_adapter, loraga_model, save_converted
from .world import SAESpec, World

Kind = Literal["lora", "sails", "direct", "random", "refusal-dir", "full", "eva", "pissa", "olora", "corda", "loraga",
               "lora-mlp-up"]
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
    sae: SAESpec | None = None  # SAILS with SAEs trained otherwise than the world's own (trained on first use)
    two_sided: bool = False  # readers start on request-side features (`select_reader_features`), writers as usual


METHODS = {m.name: m for m in [
    Method("lora", "lora", "plain LoRA, PEFT's default init (kaiming-uniform A, B = 0)"),
    Method("sails", "sails", "SAILS as in the paper: response contrast, response tokens, top-64 per layer, 80% variance"),
    Method("direct", "direct", "same pipeline, directions = residual activation differences (no SAE)"),
    Method("random", "random", "random orthonormal basis, same scale and placement as SAILS"),
    Method("full", "full", "full fine-tuning of every weight"),
    Method("refusal-dir", "refusal-dir", "control (Arditi et al. 2024): harmful-minus-benign mean residual at the last "
           "prompt token, one direction per SAE layer, orthonormalised, rest random; scaled and placed like SAILS",
           contrast="prompt"),
    Method("eva", "eva", "PEFT's EVA: A = top right-singular vectors of each module's inputs on the run's data, B = 0; "
           "PEFT defaults (rho=2: ranks redistributed, 0..2r per module, same total)"),
    Method("pissa", "pissa", "PEFT's PiSSA: A, B = top-r singular triplets of W (exact SVD: fast at this size, "
           "no seed), base = residual W; saved as a rank-2r plain LoRA for the original base"),
    Method("olora", "olora", "PEFT's OLoRA: A, B = QR of W, base = residual W; saved as a rank-2r plain LoRA for the "
           "original base"),
    Method("corda", "corda", "PEFT's CorDA, IPM (instruction-previewed: SVD of W times the covariance of its inputs "
           "on the run's data); saved as a rank-2r plain LoRA for the original base"),
    Method("loraga", "loraga", "PEFT's LoRA-GA: A, B from the SVD of each weight's gradient of the SFT loss on the "
           "run's data (ArB2r, stable scale); saved as a rank-2r plain LoRA for the original base"),
    Method("lora-mlp-up", "lora-mlp-up", "plain LoRA on up_proj of the middle half of the layers only "
           "(arXiv 2507.17075)"),
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
    Method("sails-two-sided", "sails", "SAILS, two-sided: readers on request-side features (harmful vs benign "
           "prompts, last prompt token), writers on the paper's response-side features", two_sided=True),
    Method("sails-two-sided-lr", "sails", "control: sails-two-sided at SAILS' own swept learning rate (separates its "
           "subspace from its rate)", two_sided=True, lr_of="sails"),
    Method("sails-w512", "sails", "SAILS with SAEs of 512 latents (k = 16)", sae=SAESpec(512, 16, 4, 1000), lr_of="sails"),
    Method("sails-w8192", "sails", "SAILS with SAEs of 8,192 latents (k = 16)", sae=SAESpec(8192, 16, 4, 1000),
           lr_of="sails"),
    Method("sails-k8", "sails", "SAILS with sparser SAEs (2,048 latents, k = 8)", sae=SAESpec(2048, 8, 4, 1000),
           lr_of="sails"),
    Method("sails-k64", "sails", "SAILS with denser SAEs (2,048 latents, k = 64)", sae=SAESpec(2048, 64, 4, 1000),
           lr_of="sails"),
    Method("sails-sae-auxk", "sails", "SAILS with better-trained SAEs (2,048 x 16, 8 epochs, AuxK on latents silent "
           "for 20 steps: fewer dead latents)", sae=SAESpec(2048, 16, 8, 20), lr_of="sails"),
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
    repo, sae_ids = world.sae_variant(method.sae) if method.sae else (world.sae_repo, world.sae_ids)
    return SAILSConfig(r=r, lora_alpha=lora_alpha, target_modules=list(TARGETS), sae_release=repo,
                       sae_ids={layer: sae_ids[layer] for layer in layers}, **{"top_k": 64, **overrides})


@dataclass
class Prepared:
    """What a method needs before its runs, computed once per method (stage 1 and 2 do not depend on the seed)."""

    r: int
    lora_alpha: int
    config: SAILSConfig | None = None
    subspace: Subspace | None = None


def prepare(method: Method, world: World, model: nn.Module, tokenizer: Any, corpus: Any, r: int,
            lora_alpha: int) -> Prepared:
    """Stage 1 (SAILS: feature selection) or a control subspace (direct, refusal-dir); nothing for the others
    (PEFT's data-driven inits read each run's own training data, in `trainable_model`)."""
    if method.kind not in ("sails", "direct", "refusal-dir"):
        return Prepared(r, lora_alpha, sails_config(world, method, r, lora_alpha) if method.kind == "random" else None)
    config = sails_config(world, method, r, lora_alpha)
    aligned, unaligned = selection_data(corpus, method.contrast)
    if method.kind == "direct":
        return Prepared(r, lora_alpha, config, direct_subspace(model, tokenizer, config, aligned, unaligned))
    if method.kind == "refusal-dir":
        return Prepared(r, lora_alpha, config, refusal_direction_subspace(model, tokenizer, config, aligned, unaligned))
    config = select_features(model, tokenizer, config, aligned, unaligned, show_progress=False)
    if method.two_sided:
        config = select_reader_features(model, tokenizer, config, *selection_data(corpus, "prompt"), show_progress=False)
    return Prepared(r, lora_alpha, config)


def trainable_model(method: Method, prepared: Prepared, base: nn.Module, seed: int, tokenizer: Any,
                    train_data: Dataset) -> nn.Module:
    """A fresh trainable model for one run (`base` is copied, never modified); `train_data` is what the run
    trains on (chat `messages`), for the inits that read data."""
    model = copy.deepcopy(base)
    torch.manual_seed(seed)  # LoRA's default init of A
    if method.kind == "full":
        return model
    if method.kind == "lora":
        return get_peft_model(model, LoraConfig(r=prepared.r, lora_alpha=prepared.lora_alpha,
                                                target_modules=list(TARGETS)))
    if method.kind in PEERS:
        return peer_model(method, prepared, model, tokenizer, train_data)
    config = copy.deepcopy(prepared.config)
    if method.kind == "sails":
        peft_model = get_peft_model(model, config)
    else:  # direct / random / refusal-dir: a plain LoRA adapter with the control basis written in, scaled like SAILS
        peft_model = get_peft_model(model, LoraConfig(r=prepared.r, lora_alpha=prepared.lora_alpha,
                                                      target_modules=list(TARGETS)))
        subspace = prepared.subspace or random_subspace(base.config.hidden_size, config.r, seed)
        apply_subspace(peft_model, "default", config, subspace, {"source": method.kind})
    if method.freeze_a:
        for name, param in peft_model.named_parameters():
            if "lora_A" in name and any(f".{m}." in name for m in config.reader_modules):
                param.requires_grad_(False)
    return peft_model


def middle_layers(n_layers: int) -> list[int]:
    """The middle half of `n_layers` layers: L//4 .. L - L//4 - 1."""
    return list(range(n_layers // 4, n_layers - n_layers // 4))


PEERS = {  # kind: (init_lora_weights, extra LoraConfig fields, the PEFT function that builds the model)
    "eva": ("eva", {"eva_config": EvaConfig()}, eva_model),
    "pissa": ("pissa", {}, None),
    "olora": ("olora", {}, None),
    "corda": ("corda", {"corda_config": CordaConfig(corda_method="ipm")}, corda_model),
    "loraga": ("lora_ga", {"lora_ga_config": LoraGAConfig()}, loraga_model),
    "lora-mlp-up": (True, {}, None),
}


def peer_model(method: Method, prepared: Prepared, model: nn.Module, tokenizer: Any, train_data: Dataset) -> nn.Module:
    """PEFT's own init for a peer method, on `model` (already a copy, seeded); the data-driven ones read
    `train_data`. A base-changing init keeps its initial adapter for `save_trained`."""
    init, extra, build = PEERS[method.kind]
    targets = {"target_modules": list(TARGETS)}
    if method.kind == "lora-mlp-up":
        targets = {"target_modules": ["up_proj"],
                   "layers_to_transform": middle_layers(model.config.num_hidden_layers)}
    config = LoraConfig(r=prepared.r, lora_alpha=prepared.lora_alpha, init_lora_weights=init, **targets,
                        **copy.deepcopy(extra))
    peft_model = build(model, config, tokenizer, train_data) if build else get_peft_model(model, config)
    if init in BASE_CHANGING:
        keep_initial_adapter(peft_model)
    return peft_model


def save_trained(method: Method, model: nn.Module, save_dir: Path) -> None:
    """Save a trained run: the adapter (plain LoRA keys; after PiSSA, OLoRA, CorDA or LoRA-GA converted by PEFT
    into a rank-2r LoRA for the original base weights), or the whole model for full fine-tuning."""
    if method.kind in PEERS:
        save_converted(model, save_dir)
    else:
        model.save_pretrained(str(save_dir))
