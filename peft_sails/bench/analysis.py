"""What the subspaces contain: which tokens the selected SAE features fire on, and how much of the direction that
separates harmful from benign requests each basis holds."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from ..config import SAILSConfig
from ..controls import example_means
from ..data import iter_scored_batches
from ..residual import ResidualSite, model_device, run_to_sites
from ..sae_loading import load_sae


def feature_tokens(model: Any, tokenizer: Any, config: SAILSConfig, data: Any, n_features: int = 8,
                   n_tokens: int = 3) -> dict[int, list[dict]]:
    """For the first `n_features` selected features of each layer: rho, delta, the share of scored tokens they
    fire on, and the `n_tokens` tokens with the highest mean activation (with how often each fires)."""
    out = {}
    for layer in config.layers:
        chosen = config.features[layer][:n_features]
        ids = torch.tensor([f["id"] for f in chosen])
        sae = load_sae(config.sae_release, config.sae_ids[layer], device=model_device(model))
        sums: dict[int, torch.Tensor] = defaultdict(lambda: torch.zeros(len(ids), dtype=torch.float64))
        counts: dict[int, int] = defaultdict(int)
        fired = torch.zeros(len(ids), dtype=torch.float64)
        n = [0]

        def consume(_, hidden, batch):
            acts = sae.encode(hidden[batch.score_mask].float())[:, ids].double().cpu()
            for token, row in zip(batch.input_ids[batch.score_mask].tolist(), acts):
                sums[token] += row
                counts[token] += 1
            fired.add_((acts > 0).sum(0))
            n[0] += acts.shape[0]

        run_to_sites(model, [ResidualSite(layer, "post")], iter_scored_batches(data, config, tokenizer, "cpu"), consume)
        tokens = list(sums)
        means = torch.stack([sums[t] / counts[t] for t in tokens])  # [tokens, features]
        out[layer] = [{
            **f, "firing_rate": round(float(fired[j] / max(n[0], 1)), 4),
            "top_tokens": [tokenizer.convert_ids_to_tokens(tokens[i]) for i in means[:, j].argsort(descending=True)[:n_tokens]
                           if means[i, j] > 0],
        } for j, f in enumerate(chosen)]
    return out


def prompt_direction(model: Any, tokenizer: Any, config: SAILSConfig, corpus: Any, layers: list[int],
                     n: int = 128) -> torch.Tensor:
    """Unit direction, at the last prompt token and summed over `layers`' difference of means, separating harmful
    requests (`align_pool`) from benign ones (`benign_pool`): what a model must read to know when to refuse."""
    scope = SAILSConfig(sae_release=config.sae_release, sae_ids=config.sae_ids, token_scope="last_prompt")
    harmful = example_means(model, tokenizer, scope, corpus["align_pool"].select(range(n)).select_columns(["messages"]),
                            layers)
    benign = example_means(model, tokenizer, scope, corpus["benign_pool"].select(range(n)).select_columns(["messages"]),
                           layers)
    directions = [harmful[layer].mean(0) - benign[layer].mean(0) for layer in layers]
    return torch.nn.functional.normalize(torch.stack([d / d.norm() for d in directions]).sum(0), dim=0)


def overlap(basis: torch.Tensor, direction: torch.Tensor) -> float:
    """Norm of the projection of unit `direction` onto the span of orthonormal rows `basis` (0..1; a random
    r-dimensional subspace of R^d gives about sqrt(r/d))."""
    return float((basis.double() @ direction.double()).norm())
