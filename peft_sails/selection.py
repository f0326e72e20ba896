"""Stage 1: score SAE features by how differently they fire on aligned and unaligned data; keep the top-k."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from datasets import load_dataset, load_from_disk
from sae_lens import SAE
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from .config import SAILSConfig
from .data import check_selection_data, iter_scored_batches
from .residual import ResidualSite, has_zero3_params, model_device, run_to_sites
from .sae_files import DecoderRows, decode_active, load_sae_parts
from .sae_loading import check_sae_fits

logger = logging.getLogger(__name__)
SAE_MEMORY_SHARE = 0.5  # share of the free memory that saes_per_pass=None lets selection's SAE encoders take
CHUNK_ACTIVATIONS = 2**22  # floats of one [tokens, d_sae] activation block (16 MB): 256 tokens at d_sae 16k, 32 at 131k
FIT_BATCHES = 16  # batches of each side whose scored tokens measure each SAE's reconstruction (explained variance)


@dataclass
class FeatureStats:
    """Running sums of SAE feature activations over scored tokens; memory is O(d_sae), whatever the data size."""

    act_sum: torch.Tensor
    abs_sum: torch.Tensor
    fire_count: torch.Tensor
    n_tokens: int = 0
    input_sum: Optional[torch.Tensor] = None  # [d_in]: with the sums below, how well the SAE reconstructs the
    input_sq_sum: float = 0.0  # `fit_tokens` tokens of the first FIT_BATCHES batches
    error_sq_sum: float = 0.0
    fit_tokens: int = 0

    @classmethod
    def zeros(cls, d_sae: int, device: torch.device | str = "cpu") -> "FeatureStats":
        z = lambda: torch.zeros(d_sae, dtype=torch.float64, device=device)  # noqa: E731
        return cls(z(), z(), z())

    def update(self, acts: torch.Tensor, inputs: Optional[torch.Tensor] = None,
               reconstruction: Optional[torch.Tensor] = None) -> None:
        """Add a [tokens, d_sae] block of activations (and the [tokens, d_in] inputs with their reconstruction)."""
        self.act_sum += acts.sum(0, dtype=torch.float64)
        self.abs_sum += acts.abs().sum(0, dtype=torch.float64)
        self.fire_count += (acts != 0).sum(0, dtype=torch.float64)
        self.n_tokens += acts.shape[0]
        if inputs is not None and len(inputs):
            self.fit_tokens += len(inputs)
            total = inputs.sum(0, dtype=torch.float64)
            self.input_sum = total if self.input_sum is None else self.input_sum + total
            self.input_sq_sum += float(inputs.double().square().sum())
            self.error_sq_sum += float((inputs - reconstruction).double().square().sum())

    def to(self, device: torch.device | str) -> "FeatureStats":
        """A copy with its tensors on `device`."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return dataclasses.replace(self, act_sum=move(self.act_sum), abs_sum=move(self.abs_sum),
                                   fire_count=move(self.fire_count), input_sum=move(self.input_sum))

    def merge(self, other: "FeatureStats") -> None:
        """Add the sums of `other` (e.g. one batch's); merging in a fixed order gives the same bits every time."""
        other = other.to(self.act_sum.device)
        self.act_sum += other.act_sum
        self.abs_sum += other.abs_sum
        self.fire_count += other.fire_count
        self.n_tokens += other.n_tokens
        if other.fit_tokens:
            self.input_sum = other.input_sum if self.input_sum is None else self.input_sum + other.input_sum
            self.input_sq_sum += other.input_sq_sum
            self.error_sq_sum += other.error_sq_sum
            self.fit_tokens += other.fit_tokens

    @property
    def mean(self) -> torch.Tensor:
        return self.act_sum / max(self.n_tokens, 1)

    @property
    def abs_mean(self) -> torch.Tensor:
        return self.abs_sum / max(self.n_tokens, 1)

    @property
    def firing_rate(self) -> torch.Tensor:
        return self.fire_count / max(self.n_tokens, 1)


def sae_fit(sides: Sequence[FeatureStats]) -> dict[str, float]:
    """How well an SAE describes the scored activations of `sides` together: explained variance
    1 - Σ||x - x̂||² / Σ||x - mean(x)||² (1 = perfect; 0 = no better than the mean) over the tokens of the first
    FIT_BATCHES batches of each side (`n_tokens` of them in all), and mean L0 (features firing per token) over all
    tokens."""
    n = sum(side.fit_tokens for side in sides)
    total = sum(side.input_sum for side in sides)
    variance = sum(side.input_sq_sum for side in sides) - float(total.square().sum()) / n
    error = sum(side.error_sq_sum for side in sides)
    l0 = float(sum(side.fire_count.sum() for side in sides)) / sum(side.n_tokens for side in sides)
    return {"explained_variance": 1 - error / variance if variance > 0 else float("nan"), "l0": l0, "n_tokens": n}


def rank_features(
    aligned: FeatureStats, unaligned: FeatureStats, top_k: int, min_firing_rate: float = 0.0
) -> list[dict[str, float]]:
    """Rank features by rho = |delta| / max(mean |act| aligned, mean |act| unaligned), delta = aligned - unaligned.

    Ties in rho (every feature silent on one side has rho = 1 exactly) are broken by |delta|, then by id, so the
    top-k is never an arbitrary pick. Features that fire on less than `min_firing_rate` of the scored tokens on
    both sides, or whose delta is 0, are not eligible. Returns `[{"id", "delta", "rho"}, ...]`, best first.
    """
    delta = (aligned.mean - unaligned.mean).cpu()
    scale = torch.maximum(aligned.abs_mean, unaligned.abs_mean).cpu()
    rho = torch.where(scale > 0, delta.abs() / scale.clamp_min(1e-300), torch.zeros_like(delta))
    firing = torch.maximum(aligned.firing_rate, unaligned.firing_rate).cpu()
    eligible = (delta != 0) & (firing >= min_firing_rate)
    ids = torch.nonzero(eligible).flatten()
    if len(ids) == 0:
        raise ValueError(
            f"No SAE feature is eligible (delta != 0 and firing rate >= min_firing_rate={min_firing_rate}); "
            "lower min_firing_rate or check that the aligned and unaligned data differ."
        )
    if len(ids) < top_k:
        logger.warning("Only %d features are eligible; keeping all of them instead of top_k=%d.", len(ids), top_k)
    # lexicographic sort: rho desc, |delta| desc, id asc (stable sorts, least significant key first)
    order = ids
    order = order[torch.sort(delta[order].abs(), descending=True, stable=True).indices]
    order = order[torch.sort(rho[order], descending=True, stable=True).indices]
    chosen = order[:top_k]
    n_tied = int((rho[ids] == rho[chosen[-1]]).sum())
    if n_tied > 1 and len(order) > top_k and rho[order[top_k]] == rho[chosen[-1]]:
        logger.info("%d eligible features share rho=%.4f at the top-k cut; |delta| decided.", n_tied, rho[chosen[-1]])
    return [{"id": int(i), "delta": float(delta[i]), "rho": float(rho[i])} for i in chosen]


def distributed_shard() -> tuple[int, int]:
    """(rank, world size) of this process in an initialised torch.distributed group (e.g. under `accelerate
    launch`), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def available_memory(device: torch.device) -> int:
    """Bytes free on `device`: free CUDA memory, or the system's available RAM (`MemAvailable`) for the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def selection_bytes(d_in: int, d_sae: int) -> int:
    """Memory one SAE holds during selection: its float32 encoder and the float64 sums of both sides."""
    return 4 * d_in * d_sae + 2 * 3 * 8 * d_sae


def plan_passes(layers: Sequence[int], sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Split `layers` (in order) into passes of consecutive layers whose SAEs (`sizes` bytes each) fit in `budget`
    together; a layer whose SAE alone exceeds it gets a pass of its own."""
    passes: list[list[int]] = []
    used = budget + 1
    for layer, size in zip(layers, sizes):
        if used + size > budget:
            passes.append([])
            used = 0
        passes[-1].append(layer)
        used += size
    return passes


def _passes(model: nn.Module, config: SAILSConfig, device: torch.device) -> list[list[int]]:
    """The layers of each selection pass: `config.saes_per_pass` at a time, or (None) as many as fit in
    SAE_MEMORY_SHARE of the memory available, agreed on by every process (the smallest budget wins) when selection
    is sharded or the model is partitioned by ZeRO-3 (every forward is then a collective)."""
    layers = config.layers
    if config.saes_per_pass is not None:
        return [layers[i:i + config.saes_per_pass] for i in range(0, len(layers), config.saes_per_pass)]
    sizes = []
    for layer in layers:  # configs and file headers only (whole SAEs only for formats not read in parts)
        sae, _ = load_sae_parts(config.sae_release, config.sae_ids[layer], encoder=False)
        sizes.append(selection_bytes(sae.cfg.d_in, sae.cfg.d_sae))
    budget = int(SAE_MEMORY_SHARE * available_memory(device)) - 8 * 4 * CHUNK_ACTIVATIONS  # encode workspace
    if dist.is_available() and dist.is_initialized() and (config.shard_selection or has_zero3_params(model)):
        budgets: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(budgets, budget)
        budget = min(budgets)
    passes = plan_passes(layers, sizes, budget)
    logger.info("SAILS selection: %d pass(es) %s for %.2f GB of SAE encoders, %.2f GB budget on %s "
                "(set saes_per_pass to override).", len(passes), passes, sum(sizes) / 1e9, budget / 1e9, device)
    return passes


def accumulate_feature_stats(
    model: nn.Module,
    saes: Sequence[tuple[SAE, ResidualSite, DecoderRows]],
    batches: Any,
    desc: str = "",
    show_progress: bool = True,
    gather: bool = False,
) -> list[FeatureStats]:
    """Run `batches` through `model` once, up to the deepest site; encode the scored tokens at each site with its
    SAE (float32) and sum up. Returns one `FeatureStats` per `(sae, site, decoder_rows)` (as `load_sae_parts`
    gives them: the fit's reconstructions read only the decoder rows of features that fire).

    With `gather`, every process of the torch.distributed group must call this with its own share of the batches
    (`iter_scored_batches(..., shard=distributed_shard())`): the per-batch sums of all processes are gathered and
    merged in batch order, so every process gets the sums a single process makes from all the data, bit for bit.
    That holds `d_sae` float64 sums per batch until the merge (3 x 8 bytes x d_sae x batches)."""
    device = model_device(model)
    stats = [FeatureStats.zeros(sae.cfg.d_sae, device) for sae, _, _ in saes]
    parts: list[list[tuple[int, FeatureStats]]] = [[] for _ in saes]

    def consume(i: int, hidden: torch.Tensor, batch: Any) -> None:
        x = hidden[batch.score_mask].float()
        if not torch.isfinite(x).all():
            raise ValueError(
                f"Non-finite residual activations at layer {saes[i][1].layer} ({desc}); the model's weights or "
                "dtype overflow (try float32 or bfloat16 instead of float16)."
            )
        sae, _, rows = saes[i]
        part = FeatureStats.zeros(sae.cfg.d_sae, device)
        fit = batch.index < FIT_BATCHES  # the fit needs a sample, not every token: decode a few batches only
        for chunk in x.split(max(1, CHUNK_ACTIVATIONS // sae.cfg.d_sae)):  # activations are the big tensors
            acts = sae.encode(chunk)
            part.update(acts, chunk if fit else None, decode_active(sae, acts, rows) if fit else None)
        if gather:
            parts[i].append((batch.index, part.to("cpu")))  # gathered through pickling: never device tensors
        else:
            stats[i].merge(part)

    run_to_sites(model, [site for _, site, _ in saes], batches, consume, desc=desc, show_progress=show_progress)
    if gather:
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, parts)
        for i, side in enumerate(stats):
            for _, part in sorted((p for process in everyone for p in process[i]), key=lambda p: p[0]):
                side.merge(part)
    for (_, site, _), side in zip(saes, stats):
        if side.n_tokens == 0:
            raise ValueError(f"No tokens to score at layer {site.layer} ({desc}): check token_scope and max_length.")
    return stats


def select_features(
    model: nn.Module,
    tokenizer: Any,
    config: SAILSConfig,
    aligned: Any,
    unaligned: Any,
    show_progress: bool = True,
) -> SAILSConfig:
    """Stage 1 of SAILS: return a copy of `config` with `features` set for every layer in `config.sae_ids`.

    Args:
        model: the base `transformers` causal LM (any dtype/device; SAE math runs in float32 on its device).
        tokenizer: its (fast) tokenizer, with a chat template for chat-format data.
        config: a `SAILSConfig`; `top_k`, `min_firing_rate`, `token_scope` and the column names are used.
        aligned, unaligned: `datasets.Dataset` (or lists of dicts) in chat (`messages`) or prompt/completion format:
            harmful requests with refusals, and the same kind of requests with compliance (the paper's contrast).
            To contrast harmful with benign *requests* instead, pass benign chats as `unaligned` and set
            `config.token_scope` to "prompt" or "last_prompt" (the benchmark's `sails-prompt` variant).

    The SAEs of one pass are loaded together and released once their layers are scored; each forward pass stops at
    the deepest of their layers. `config.saes_per_pass` SAEs make a pass; None (default) puts as many consecutive
    layers in a pass as fit in SAE_MEMORY_SHARE (half) of the free memory of the model's device (logged). Memory:
    the encoders of those SAEs (their decoders stay on disk: see `sae_files`), one batch of activations and O(d_sae)
    running sums per SAE and side; it does not grow with the data. Fewer passes cost less time, not other features.

    Under torch.distributed (`accelerate launch`) with `config.shard_selection` (default), every process must call
    this: each scores only its share of the batches, the sums are gathered (as PEFT's EVA gathers its statistics),
    and every process returns the features a single process would select from all the data, bit for bit. Memory then
    also holds O(d_sae) sums per batch until they are merged. A model partitioned by DeepSpeed ZeRO-3 (with or without
    its engine) is scored whole on every process instead, each module's weights gathered for its forward: the same
    features, each process doing all the work.
    """
    for data, name in ((aligned, "aligned"), (unaligned, "unaligned")):
        check_selection_data(data, config, tokenizer, name)
    device = model_device(model)
    # Under ZeRO-3 every forward gathers weights from every process: all of them run all the batches (not sharded).
    shard = distributed_shard() if config.shard_selection and not has_zero3_params(model) else (0, 1)
    show_progress = show_progress and shard[0] == 0
    was_training = model.training
    model.eval()
    features: dict[int, list[dict[str, float]]] = {}
    fits: dict[int, dict[str, float]] = {}
    progress = tqdm(total=len(config.layers), desc="SAILS feature selection", disable=not show_progress)
    try:
        for chunk in _passes(model, config, device):
            saes = []
            for layer in chunk:
                sae, rows = load_sae_parts(config.sae_release, config.sae_ids[layer], device=device)
                saes.append((sae, check_sae_fits(sae, model, layer, config.check_sae_model), rows))
                if config.top_k > sae.cfg.d_sae:
                    raise ValueError(
                        f"top_k={config.top_k} is larger than the SAE width d_sae={sae.cfg.d_sae} at layer {layer}."
                    )
            aligned_stats, unaligned_stats = (
                accumulate_feature_stats(model, saes, iter_scored_batches(data, config, tokenizer, device, shard),
                                         desc=f"layers {chunk} {name}", show_progress=show_progress,
                                         gather=shard[1] > 1)
                for data, name in ((aligned, "aligned"), (unaligned, "unaligned"))
            )
            for layer, a, u in zip(chunk, aligned_stats, unaligned_stats):
                features[layer] = rank_features(a, u, top_k=config.top_k, min_firing_rate=config.min_firing_rate)
                fits[layer] = sae_fit([a, u])
                _warn_poor_fit(layer, fits[layer], config)
            del saes, aligned_stats, unaligned_stats
            progress.update(len(chunk))
    finally:
        progress.close()
        model.train(was_training)
    selected = copy.deepcopy(config)
    selected.features, selected.sae_fit = features, fits
    return selected


def select_reader_features(
    model: nn.Module,
    tokenizer: Any,
    config: SAILSConfig,
    harmful: Any,
    benign: Any,
    show_progress: bool = True,
) -> SAILSConfig:
    """Stage 1 for the readers of a two-sided subspace (experimental): return a copy of `config` with
    `reader_features` set for every layer in `config.sae_ids` (`features` and `sae_fit` are kept as they are).

    The ranking is `select_features`'s, run with `token_scope = config.reader_token_scope` (default "last_prompt",
    the token where the model decides how to answer) on harmful against benign requests: Δ = mean activation on
    harmful minus mean on benign, ρ = |Δ| / max(mean |act| harmful, mean |act| benign), top `config.top_k` per layer.
    With `reader_features` set, `get_peft_model` starts the readers (`reader_modules`: q/k/v/gate/up) in the basis
    of these request-side features and the writers (o/down) in the basis of `features` (refusal vs compliance).

    Args:
        model, tokenizer: as for `select_features`.
        config: a `SAILSConfig`; `reader_token_scope`, `top_k`, `min_firing_rate` and the column names are used.
        harmful: harmful requests, e.g. the aligned data given to `select_features` (at "last_prompt" or "prompt"
            only the prompt is scored: the response does not matter, but chat rows must end with one).
        benign: benign requests, in the same format (e.g. LLM-LAT/benign-dataset turned into chats).
        show_progress: show progress bars.

    Memory, time and distributed behaviour are those of `select_features` (one more pass over the SAEs).
    """
    for data, name in ((harmful, "harmful"), (benign, "benign")):
        check_selection_data(data, config, tokenizer, name)
    scoped = copy.deepcopy(config)
    scoped.token_scope = config.reader_token_scope
    result = select_features(model, tokenizer, scoped, harmful, benign, show_progress=show_progress)
    selected = copy.deepcopy(config)
    selected.reader_features = result.features
    return selected


def _warn_poor_fit(layer: int, fit: dict[str, float], config: SAILSConfig) -> None:
    if not fit["explained_variance"] >= config.min_explained_variance:
        logger.warning(
            "The SAE at layer %d (%s) explains only %.1f%% of the variance of this model's activations on the "
            "selection data (L0 %.1f, %d tokens; warning below min_explained_variance=%.0f%%): it may not fit this "
            "model (an SAE of another model, layer or hook?), and its features may not mean what their labels say.",
            layer, config.sae_ids[layer], 100 * fit["explained_variance"], fit["l0"], fit["n_tokens"],
            100 * config.min_explained_variance,
        )


def select_features_from_config(
    model: nn.Module, config: SAILSConfig, tokenizer: Optional[Any] = None, overwrite: bool = True
) -> None:
    """Run stage 1 on the datasets named in `config` (Hub ids or local paths) and set `config.features` in place;
    with `config.benign_dataset`, also `config.reader_features` (`select_reader_features` on the harmful requests
    of `aligned_dataset` against `benign_dataset`). With `overwrite=False`, a side already set is kept (what
    `get_peft_model` does)."""
    def _load(name: str):
        if os.path.isdir(name) and os.path.exists(os.path.join(name, "dataset_info.json")):
            data = load_from_disk(name)
        else:
            data = load_dataset(name, split=config.dataset_split)
        return data[config.dataset_split] if hasattr(data, "keys") and config.dataset_split in data else data

    writers = overwrite or config.features is None
    readers = config.benign_dataset is not None and (overwrite or config.reader_features is None)
    if not (writers or readers):
        return
    if config.aligned_dataset is None:
        raise ValueError("The SAILSConfig names no selection data: set `aligned_dataset` and `unaligned_dataset`.")
    if tokenizer is None:
        name = config.tokenizer_name_or_path or getattr(model, "name_or_path", None) or config.base_model_name_or_path
        if not name:
            raise ValueError("Set `tokenizer_name_or_path` in SAILSConfig: the model does not say where it came from.")
        tokenizer = AutoTokenizer.from_pretrained(name)
    aligned = _load(config.aligned_dataset)
    if writers:
        result = select_features(model, tokenizer, config, aligned, _load(config.unaligned_dataset))
        config.features, config.sae_fit = result.features, result.sae_fit
    if readers:
        result = select_reader_features(model, tokenizer, config, aligned, _load(config.benign_dataset))
        config.reader_features = result.reader_features
