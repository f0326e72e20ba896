"""Control subspaces for SAILS experiments, built like the SAILS basis but without an SAE: `direct_subspace`
(directions of the residual activation differences between aligned and unaligned data) and `random_subspace`
(a seeded random orthonormal basis), and `refusal_direction_subspace` (Arditi et al. 2024: the harmful-minus-benign
difference of means at the last prompt token, one per layer, filled up with random directions). Write any of them into
a LoRA adapter with `peft_sails.initialization.write_sails_weights`, which scales it like SAILS (norm-matched)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .config import SAILSConfig
from .data import check_selection_data, iter_scored_batches
from .residual import ResidualSite, model_device, run_to_sites
from .subspace import Subspace, build_subspace, orthonormalize_rows


def example_means(model: nn.Module, tokenizer: Any, config: SAILSConfig, data: Any, layers: Sequence[int],
                  show_progress: bool = False) -> dict[int, torch.Tensor]:
    """Per example, the mean residual activation (float32, `[n, d]`) after each layer in `layers` over the tokens
    `config.token_scope` selects."""
    sites = [ResidualSite(layer, "post") for layer in layers]
    chunks: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}

    def consume(i: int, hidden: torch.Tensor, batch: Any) -> None:
        mask = batch.score_mask.unsqueeze(-1).float()
        chunks[layers[i]].append(((hidden.float() * mask).sum(1) / mask.sum(1).clamp_min(1)).cpu())

    was_training = model.training
    model.eval()
    try:
        run_to_sites(model, sites, iter_scored_batches(data, config, tokenizer, model_device(model)), consume,
                     desc="residual means", show_progress=show_progress)
    finally:
        model.train(was_training)
    return {layer: torch.cat(c) for layer, c in chunks.items()}


def difference_rows(model: nn.Module, tokenizer: Any, config: SAILSConfig, aligned: Any, unaligned: Any,
                    layers: Sequence[int], show_progress: bool = False) -> torch.Tensor:
    """Activation differences, stacked over `layers`: each aligned example's mean residual minus the unaligned
    mean, and the aligned mean minus each unaligned example's (their average is the difference of means)."""
    for data, name in ((aligned, "aligned"), (unaligned, "unaligned")):
        check_selection_data(data, config, tokenizer, name)
    a = example_means(model, tokenizer, config, aligned, layers, show_progress)
    u = example_means(model, tokenizer, config, unaligned, layers, show_progress)
    return torch.cat([torch.cat([a[layer] - u[layer].mean(0), a[layer].mean(0) - u[layer]]) for layer in layers])


def direct_subspace(model: nn.Module, tokenizer: Any, config: SAILSConfig, aligned: Any, unaligned: Any,
                    layers: Sequence[int] | None = None, show_progress: bool = False) -> Subspace:
    """The SAILS pipeline with SAE decoder rows replaced by activation differences (`difference_rows`): PCA to
    `config.variance_threshold`, fitted to rank `config.r` by the same rule, QR. `layers` default to
    `config.layers`."""
    rows = difference_rows(model, tokenizer, config, aligned, unaligned, layers or config.layers, show_progress)
    return build_subspace(rows, config.variance_threshold, config.r, fill=config.subspace_fill, seed=config.seed)


def refusal_direction_subspace(model: nn.Module, tokenizer: Any, config: SAILSConfig, harmful: Any, benign: Any,
                               layers: Sequence[int] | None = None, seed: int = 0) -> Subspace:
    """The refusal directions of Arditi et al. (2024, "Refusal in language models is mediated by a single
    direction"): per layer in `layers` (default `config.layers`), the mean residual activation after the layer at the
    last prompt token (where the model decides whether to refuse) over `harmful` requests minus that over `benign`
    ones. The per-layer directions are orthonormalised (`build_subspace`, all of their variance) and the remaining
    `config.r - len(layers)` rows are seeded random directions orthogonal to them. The token scope is always
    "last_prompt", whatever `config.token_scope` says; the prompt is what `config`'s columns and template give."""
    layers = list(layers or config.layers)
    scope = copy.copy(config)
    scope.token_scope = "last_prompt"
    for data, name in ((harmful, "harmful"), (benign, "benign")):
        check_selection_data(data, scope, tokenizer, name)
    h = example_means(model, tokenizer, scope, harmful, layers)
    b = example_means(model, tokenizer, scope, benign, layers)
    rows = torch.stack([h[layer].mean(0) - b[layer].mean(0) for layer in layers])
    return build_subspace(rows, 1.0, config.r, fill="random", seed=seed)


def random_subspace(d: int, r: int, seed: int = 0) -> Subspace:
    """A random orthonormal `[r, d]` basis (Gaussian rows, QR), reproducible from `seed`."""
    if not 0 < r <= d:
        raise ValueError(f"r={r} must be between 1 and the residual width d={d}.")
    rows = torch.randn(r, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return Subspace(basis=orthonormalize_rows(rows).float(), n_threshold=0, n_pca=0, variance_kept=0.0,
                    explained=torch.zeros(0))
