"""What did an adapter learn, in SAE features? The library behind `peft-sails inspect`.

    peft-sails inspect SAILS_ADAPTER --prompts harmful=DATA benign=DATA
    peft-sails inspect LORA_ADAPTER --subspace_from SAILS_ADAPTER --prompts harmful=DATA benign=DATA
    peft-sails inspect LORA_ADAPTER --sae RELEASE --sae_ids 5=ID 10=ID --harmful_dataset DATA --prompts ...

Weight view, in residual-stream coordinates (the ones the SAE describes): for every adapted module, the share of
||ΔW||²_F (ΔW = B·A, taken through the RMSNorm scale s between the module and the residual stream: ΔW·diag(s) for
a module that reads the stream, diag(s)·ΔW for one that writes to it through a post-norm) that lies in the SAILS
subspace (its row space for readers, its column space for writers), next to the share a random subspace of the
same dimension k captures (k/d in expectation, and one seeded draw), and the principal angles between the learned
factor and the SAILS basis.
Feature view: the SAE features whose mean activation on a prompt set the adapter changes most (with vs without
the adapter), marked when they are among the selected features, with their Neuronpedia page when the SAE has a
`neuronpedia_id`. Outputs: `report.md`, `report.json` and PNG plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import datasets
import torch
import transformers
from datasets import load_dataset
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from tqdm.auto import tqdm

from .card import NEURONPEDIA
from .config import SAILSConfig
from .data import iter_scored_batches, to_chat
from .initialization import LAYER_INDEX, Role, base_model_of, compute_sails_subspace, module_role, residual_factor
from .quiet import quiet_libraries
from .residual import decoder_layers
from .sae_files import load_sae_parts
from .sae_loading import check_sae_fits
from .selection import FeatureStats, accumulate_feature_stats, model_device, select_features
from .subspace import principal_directions, orthonormalize_rows

TOKEN_SCOPES = ("last_prompt", "prompt")
EMPTY_ANSWER = [{"role": "assistant", "content": ""}]


@dataclass
class ModuleShare:
    """How much of one module's update ΔW = scaling·B·A lies in the SAILS subspace."""

    name: str  # module path in the base model, e.g. "model.layers.3.self_attn.q_proj"
    module: str  # its last part, e.g. "q_proj"
    layer: Optional[int]
    role: str  # "reader": the row space of ΔW is measured; "writer": its column space
    rank: int  # = k, the dimension of the subspace it is measured against
    width: int  # = d, the residual stream width
    delta_norm: float  # ||ΔW||_F
    share: Optional[float]  # ||ΔW Qᵀ||² / ||ΔW||² (readers) or ||Q ΔW||² / ||ΔW||² (writers); None if ΔW = 0
    baseline: float  # k / d: the expected share of a uniformly random k-dimensional subspace
    random_share: Optional[float]  # the share of one seeded random k-dimensional subspace
    angles: Optional[list[float]]  # principal angles (degrees, ascending) between the learned lora_A rows
    # (readers) or lora_B columns (writers) and the SAILS initial basis; None for writers SAILS leaves to LoRA


@dataclass
class FeatureShift:
    """The change of one SAE feature's mean activation when the adapter is switched on."""

    layer: int
    feature: int
    mean_without: float
    mean_with: float
    change: float  # mean_with - mean_without
    selected: bool  # among the features the subspace is built from
    url: Optional[str]  # its Neuronpedia page, when the SAE names a neuronpedia_id


@dataclass
class LayerShifts:
    """The features of one SAE layer the adapter moves most on one prompt set."""

    layer: int
    n_tokens: int
    d_sae: int
    n_selected: int
    selected_change_share: Optional[float]  # Σ |change| of the selected features / Σ |change| of all features
    selected_baseline: float  # n_selected / d_sae: that share if the change were spread evenly
    n_selected_in_top: int
    top: list[FeatureShift]


@dataclass
class PromptSetShifts:
    name: str
    n_prompts: int
    layers: list[LayerShifts]


@dataclass
class AdapterInspection:
    """Everything `peft-sails inspect` measures on one adapter; `save` writes report.md, report.json and plots."""

    adapter: str
    base_model: Optional[str]
    subspace_source: str  # where the SAE features that define the subspace come from
    sae_release: str
    sae_ids: dict[int, str]
    n_features: dict[int, int]  # selected features per layer
    subspace: dict[str, Any]  # basis size and variance kept (as in the adapter's subspace_stats)
    modules: list[ModuleShare]
    skipped: dict[str, str]  # adapted modules that are not measured, and why
    summary: dict[str, Any]
    token_scope: str
    prompt_sets: list[PromptSetShifts] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # int keys -> str, as in report.json

    def save(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        """Write `report.json`, `subspace_share.png`, `features_<prompt set>.png` and `report.md` to `output_dir`."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "report.json", "markdown": out / "report.md"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2))
        if any(m.share is not None for m in self.modules):
            paths["subspace_plot"] = plot_subspace_shares(self.modules, out / "subspace_share.png")
        for shifts in self.prompt_sets:
            paths[f"features_{shifts.name}"] = plot_feature_shifts(shifts, out / f"features_{_slug(shifts.name)}.png")
        paths["markdown"].write_text(render_markdown(self, {k: v.name for k, v in paths.items()}))
        return paths


def subspace_config(adapter_config: LoraConfig, source: SAILSConfig) -> SAILSConfig:
    """The SAE, features and subspace settings of `source` with the rank and modules of the adapter inspected:
    the subspace a SAILS adapter of the same shape starts in (`source` may be the adapter's own sidecar)."""
    lora = {f.name: getattr(adapter_config, f.name) for f in dataclasses.fields(LoraConfig) if f.init}
    lora.pop("peft_type", None)
    lora["init_lora_weights"] = "sails"
    return SAILSConfig(**lora, **source.sails_dict())


def _energy(left: torch.Tensor, right: torch.Tensor) -> float:
    """||left @ right||²_F through the r x r Gram matrices, so a [d_out, d_in] ΔW is never formed."""
    return float(((left.T @ left) * (right @ right.T)).sum())


def subspace_share(lora_a: torch.Tensor, lora_b: torch.Tensor, basis: torch.Tensor, role: Role) -> Optional[float]:
    """Share of ||B·A||²_F inside the span of the orthonormal rows of `basis`: the row space of B·A for a reader,
    its column space for a writer. None when B·A = 0."""
    total = _energy(lora_b, lora_a)
    if total <= 0:
        return None
    inside = _energy(lora_b, lora_a @ basis.T) if role == "reader" else _energy(basis @ lora_b, lora_a)
    return inside / total


def principal_angles(rows_a: torch.Tensor, rows_b: torch.Tensor) -> Optional[list[float]]:
    """Principal angles in degrees, ascending, between the row spans of two matrices; None if one is zero."""
    if not rows_a.any() or not rows_b.any():
        return None
    span_a, span_b = principal_directions(rows_a)[0], principal_directions(rows_b)[0]
    cosines = torch.linalg.svdvals(span_a @ span_b.T).clamp(0, 1)
    return torch.rad2deg(torch.arccos(cosines)).tolist()


@torch.no_grad()
def subspace_shares(
    model: nn.Module, config: SAILSConfig, basis: torch.Tensor, adapter_name: str = "default", seed: int = 0,
    reader_basis: Optional[torch.Tensor] = None,
) -> tuple[list[ModuleShare], dict[str, str]]:
    """The weight view: a `ModuleShare` for every LoRA module of `adapter_name` that reads or writes the residual
    stream (`config.reader_modules` / `writer_modules`), measured in residual-stream coordinates against the
    rows of `basis` (the SAILS subspace itself, not its image behind a norm), so that the share says which
    residual directions a module reads or writes, whatever `norm_mapping` wrote. Returns the shares and the
    modules left out, with the reason. With `reader_basis` (a two-sided subspace), readers are measured against
    it and writers against `basis`."""
    base = base_model_of(model)
    hidden = base.config.hidden_size
    blocks = decoder_layers(base)
    generator = torch.Generator().manual_seed(seed)
    shares, skipped = [], {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer) or adapter_name not in module.lora_A:
            continue
        role = module_role(name, config)
        lora_a = module.lora_A[adapter_name].weight.detach().to("cpu", torch.float64)
        lora_b = module.lora_B[adapter_name].weight.detach().to("cpu", torch.float64)
        if role is None:
            skipped[name] = "neither a reader nor a writer of the residual stream (reader_modules/writer_modules)"
            continue
        if lora_a.dim() != 2 or (lora_a.shape[1] if role == "reader" else lora_b.shape[0]) != hidden:
            skipped[name] = f"a {role} whose {'input' if role == 'reader' else 'output'} is not the residual stream"
            continue
        rank = module.r[adapter_name]
        init = (reader_basis if role == "reader" and reader_basis is not None else basis)[:rank].double()
        random_basis = orthonormalize_rows(torch.randn(rank, hidden, generator=generator, dtype=torch.float64))
        if role == "reader":  # the residual-stream directions read: rows of lora_A · diag(s)
            lora_a = residual_factor(blocks, name, role, lora_a)
        else:  # what reaches the residual stream: diag(s) · lora_B behind a post-norm
            lora_b = residual_factor(blocks, name, role, lora_b.T).T
        factor = lora_a if role == "reader" else lora_b.T  # the factor SAILS initialises with the basis
        match = LAYER_INDEX.search(name)
        shares.append(ModuleShare(
            name=name, module=name.rsplit(".", 1)[-1], layer=int(match.group(1)) if match else None, role=role,
            rank=rank, width=hidden,
            delta_norm=module.scaling[adapter_name] * math.sqrt(max(_energy(lora_b, lora_a), 0.0)),
            share=subspace_share(lora_a, lora_b, init, role), baseline=rank / hidden,
            random_share=subspace_share(lora_a, lora_b, random_basis, role),
            angles=principal_angles(factor, init) if role == "reader" or config.writer_init == "basis" else None,
        ))
    return shares, skipped


def summarize_shares(shares: list[ModuleShare]) -> dict[str, Any]:
    """Mean share, random baseline (k/d and the seeded draw) and principal angle, over all modules and per role;
    `weighted_share` weighs each module by ||ΔW||²."""
    def stats(group: list[ModuleShare]) -> dict[str, Any]:
        measured = [m for m in group if m.share is not None]
        if not measured:
            return {"n_modules": 0}
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        energy = sum(m.delta_norm ** 2 for m in measured)
        angles = [mean(m.angles) for m in measured if m.angles]
        return {
            "n_modules": len(measured),
            "mean_share": mean([m.share for m in measured]),
            "weighted_share": sum(m.share * m.delta_norm ** 2 for m in measured) / energy if energy else None,
            "mean_baseline": mean([m.baseline for m in measured]),
            "mean_random_share": mean([m.random_share for m in measured]),
            "mean_principal_angle": mean(angles) if angles else None,
        }

    roles = {role: stats([m for m in shares if m.role == role]) for role in ("reader", "writer")}
    return {"all": stats(shares), **roles}


def prompt_rows(prompts: Any, tokenizer: Any, name: str = "prompts") -> list[dict[str, Any]]:
    """Prompts (strings, or rows with a `prompt` string or chat, or a `messages` chat whose final assistant turn is
    dropped) as prompt/completion rows for `iter_scored_batches`. With a chat template the completion is an empty
    assistant turn, so the prompt ends with the generation prompt; without one, prompts are plain text."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    rows = []
    for item in prompts:
        prompt = item if isinstance(item, (str, list)) else item.get("prompt", item.get("messages"))
        if prompt is None:
            raise ValueError(f"Prompt set {name!r}: a row needs a 'prompt' or 'messages' column, got {sorted(item)}.")
        if isinstance(prompt, list):
            if not chat:
                raise ValueError(f"Prompt set {name!r} holds chats but the tokenizer has no chat_template; give "
                                 "plain-text prompts or the chat model's tokenizer.")
            prompt = prompt[:-1] if prompt and prompt[-1].get("role") == "assistant" else prompt
        elif chat:
            prompt = [{"role": "user", "content": prompt}]
        rows.append({"prompt": prompt, "completion": EMPTY_ANSWER if chat else ""})
    if not rows:
        raise ValueError(f"Prompt set {name!r} is empty.")
    return rows


def layer_shifts(layer: int, with_adapter: FeatureStats, without: FeatureStats, selected: set[int],
                 neuronpedia_id: Optional[str], top_n: int) -> LayerShifts:
    """Rank one layer's features by |mean with the adapter - mean without| (ties: lower id first)."""
    change = (with_adapter.mean - without.mean).cpu()
    order = torch.sort(change.abs(), descending=True, stable=True).indices[:top_n].tolist()
    total = float(change.abs().sum())
    chosen = torch.tensor(sorted(selected), dtype=torch.long)
    top = [FeatureShift(layer=layer, feature=i, mean_without=float(without.mean[i]),
                        mean_with=float(with_adapter.mean[i]), change=float(change[i]), selected=i in selected,
                        url=f"{NEURONPEDIA}/{neuronpedia_id}/{i}" if neuronpedia_id else None) for i in order]
    return LayerShifts(
        layer=layer, n_tokens=with_adapter.n_tokens, d_sae=len(change), n_selected=len(selected),
        selected_change_share=float(change.abs()[chosen].sum()) / total if total > 0 else None,
        selected_baseline=len(selected) / len(change), n_selected_in_top=sum(s.selected for s in top), top=top,
    )


def feature_shifts(
    model: PeftModel,
    tokenizer: Any,
    config: SAILSConfig,
    prompt_sets: dict[str, Any],
    top_n: int = 20,
    token_scope: str = "last_prompt",
    show_progress: bool = True,
) -> list[PromptSetShifts]:
    """The feature view: for each SAE in `config.sae_ids` and each prompt set, encode the residual stream at the
    SAE's hook (float32) with the active adapter and under `model.disable_adapter()`, and keep the `top_n`
    features whose mean activation changes most. `token_scope`: "last_prompt" (the position where the model
    decides how to answer) or "prompt" (every prompt token). One SAE is loaded at a time; passes stop at its layer.
    """
    if not isinstance(model, PeftModel):
        raise TypeError(f"The feature view needs a PeftModel (to switch the adapter off), got {type(model).__name__}.")
    if token_scope not in TOKEN_SCOPES:
        raise ValueError(f"token_scope must be one of {TOKEN_SCOPES}, got {token_scope!r}.")
    if top_n <= 0:
        raise ValueError(f"top_n must be a positive number of features, got {top_n!r}.")
    scoring = dataclasses.replace(config, token_scope=token_scope, prompt_column="prompt",
                                  completion_column="completion", max_selection_samples=None)
    rows = {name: prompt_rows(data, tokenizer, name) for name, data in prompt_sets.items()}
    selected = {layer: {f["id"] for f in feats} for layer, feats in (config.features or {}).items()}
    device = model_device(model)
    per_set: dict[str, list[LayerShifts]] = {name: [] for name in rows}
    was_training = model.training
    model.eval()
    try:
        for layer in tqdm(config.layers, desc="SAE features moved by the adapter", disable=not show_progress):
            sae, decoder_rows = load_sae_parts(config.sae_release, config.sae_ids[layer], device=device)
            site = check_sae_fits(sae, model.get_base_model(), layer, config.check_sae_model)
            for name, data in rows.items():
                desc = f"layer {layer} {name}"
                (with_adapter,) = accumulate_feature_stats(model, [(sae, site, decoder_rows)], iter_scored_batches(
                    data, scoring, tokenizer, device), f"{desc} with adapter", show_progress)
                with model.disable_adapter():
                    (without,) = accumulate_feature_stats(model, [(sae, site, decoder_rows)], iter_scored_batches(
                        data, scoring, tokenizer, device), f"{desc} without adapter", show_progress)
                per_set[name].append(layer_shifts(layer, with_adapter, without, selected.get(layer, set()),
                                                  sae.cfg.metadata.neuronpedia_id, top_n))
            del sae
    finally:
        model.train(was_training)
    return [PromptSetShifts(name, len(rows[name]), per_set[name]) for name in rows]


def inspect_adapter(
    model: PeftModel,
    tokenizer: Any,
    sails_config: SAILSConfig,
    prompt_sets: Optional[dict[str, Any]] = None,
    adapter_name: str = "default",
    top_n: int = 20,
    token_scope: str = "last_prompt",
    seed: int = 0,
    show_progress: bool = True,
    adapter: str = "",
    subspace_source: str = "",
) -> AdapterInspection:
    """Inspect adapter `adapter_name` of `model` against the SAILS subspace of `sails_config` (the adapter's own
    `SAILSConfig.from_pretrained(...)`, or another adapter's for a plain LoRA adapter): the weight view, and the
    feature view on `prompt_sets` ({name: dataset or list of prompts}) when given. `seed` draws the random
    subspaces of the baseline; `adapter` and `subspace_source` are labels for the report. The feature view needs
    `adapter_name` to be the active adapter."""
    if prompt_sets and model.active_adapter != adapter_name:
        raise ValueError(f"The feature view runs the active adapter {model.active_adapter!r}, not {adapter_name!r}: "
                         f"call model.set_adapter({adapter_name!r}) first.")
    config = subspace_config(model.peft_config[adapter_name], sails_config)
    if not config.features:
        raise ValueError("The SAILS config has no `features`: select them first (peft_sails.select_features).")
    base = base_model_of(model)
    subspace, stats = compute_sails_subspace(base, config, show_progress)
    modules, skipped = subspace_shares(model, config, subspace.basis.double(), adapter_name, seed,
                                       reader_basis=subspace.basis_for("reader").double())
    shifts = (feature_shifts(model, tokenizer, config, prompt_sets, top_n, token_scope, show_progress)
              if prompt_sets else [])
    return AdapterInspection(
        adapter=adapter or str(getattr(model, "name_or_path", "")), base_model=config.base_model_name_or_path,
        subspace_source=subspace_source or "the given SAILSConfig", sae_release=config.sae_release,
        sae_ids=config.sae_ids, n_features={layer: len(f) for layer, f in config.features.items()},
        subspace=stats, modules=modules, skipped=skipped,
        summary=summarize_shares(modules), token_scope=token_scope, prompt_sets=shifts,
    )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_subspace_shares(modules: list[ModuleShare], path: Path) -> Path:
    """Share of ||ΔW||² in the subspace per layer, one line per module kind, against the random baseline."""
    measured = [m for m in modules if m.share is not None and m.layer is not None]
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for kind in sorted({m.module for m in measured}):
        group = sorted((m for m in measured if m.module == kind), key=lambda m: m.layer)
        ax.plot([m.layer for m in group], [100 * m.share for m in group], marker="o", label=kind)
    layers = sorted({m.layer for m in measured})
    ax.plot(layers, [100 * sum(m.random_share for m in measured if m.layer == layer) /
                     sum(m.layer == layer for m in measured) for layer in layers],
            color="grey", marker="x", linestyle=":", label="random subspace (seeded draw)")
    ax.axhline(100 * sum(m.baseline for m in measured) / len(measured), color="grey", linestyle="--",
               label="random subspace (k/d)")
    ax.set(xlabel="layer", ylabel="share of ||ΔW||² in the SAILS subspace (%)", ylim=(0, 105),
           title="Where the update lies (readers: row space; writers: column space)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small", ncols=2)
    fig.savefig(path, dpi=120)
    return path


def plot_feature_shifts(shifts: PromptSetShifts, path: Path) -> Path:
    """One panel per SAE layer: the change in mean activation of the top features, selected ones highlighted."""
    height = 0.35 * max(len(s.top) for s in shifts.layers) + 1.2
    fig = Figure(figsize=(3.5 * len(shifts.layers) + 1, height), layout="constrained")
    axes = fig.subplots(1, len(shifts.layers), squeeze=False)[0]
    for ax, layer in zip(axes, shifts.layers):
        top = layer.top[::-1]  # largest at the top
        ax.barh([f"#{s.feature}" for s in top], [s.change for s in top],
                color=["tab:red" if s.selected else "tab:grey" for s in top])
        ax.axvline(0, color="black", linewidth=0.5)
        ax.set(title=f"layer {layer.layer}", xlabel="change in mean activation")
        ax.tick_params(axis="y", labelsize="small")
    fig.suptitle(f"Features the adapter moves most on '{shifts.name}' (red: selected)")
    fig.savefig(path, dpi=120)
    return path


def _pct(value: Optional[float]) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def render_markdown(report: AdapterInspection, files: dict[str, str]) -> str:
    """The markdown report; `files` maps plot keys of `AdapterInspection.save` to file names."""
    sub = report.subspace
    lines = [
        f"# What `{report.adapter}` learned, in SAE features", "",
        f"Base model: `{report.base_model}`. Subspace: {sub['subspace_dim']} directions built from "
        f"{sum(report.n_features.values())} features of `{report.sae_release}` (layers "
        f"{', '.join(map(str, sorted(report.sae_ids)))}), variance kept {_pct(sub['variance_kept'])}; "
        f"features from {report.subspace_source}.", "",
        "## Weight view", "",
        "Share of ||ΔW||²_F inside the SAILS subspace (readers: row space; writers: column space), against a random "
        "subspace of the same dimension k (expected share k/d, and one seeded draw). Angles: principal angles "
        "between the learned lora_A rows (readers) or lora_B columns (writers) and the SAILS initial basis.", "",
        "| modules | n | share in subspace | weighted by ‖ΔW‖² | random k/d | random draw | mean angle |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for group, stats in report.summary.items():
        if stats["n_modules"]:
            angle = stats["mean_principal_angle"]
            lines.append(f"| {group} | {stats['n_modules']} | {_pct(stats['mean_share'])} | "
                         f"{_pct(stats['weighted_share'])} | {_pct(stats['mean_baseline'])} | "
                         f"{_pct(stats['mean_random_share'])} | {'—' if angle is None else f'{angle:.1f}°'} |")
    if "subspace_plot" in files:
        lines += ["", f"![subspace share per layer]({files['subspace_plot']})"]
    lines += ["", "<details><summary>Per module</summary>", "",
              "| module | role | ‖ΔW‖_F | share | random draw | k/d | angles (°) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in report.modules:
        angles = "—" if m.angles is None else ", ".join(f"{a:.0f}" for a in m.angles)
        lines.append(f"| `{m.name}` | {m.role} | {m.delta_norm:.4g} | {_pct(m.share)} | {_pct(m.random_share)} | "
                     f"{_pct(m.baseline)} | {angles} |")
    lines += ["", "</details>"]
    if report.skipped:
        lines += ["", "Not measured: " + "; ".join(f"`{n}` ({why})" for n, why in report.skipped.items()) + "."]
    lines += ["", "## Feature view", ""]
    if not report.prompt_sets:
        lines.append("No prompt sets given (`--prompts NAME=DATA ...`): feature view skipped.")
    for shifts in report.prompt_sets:
        lines += [f"### {shifts.name} ({shifts.n_prompts} prompts, tokens: {report.token_scope})", "",
                  f"![top features on {shifts.name}]({files[f'features_{shifts.name}']})", ""]
        for layer in shifts.layers:
            lines += [f"Layer {layer.layer}: {layer.n_selected_in_top} of the top {len(layer.top)} are selected "
                      f"features; the {layer.n_selected} selected features carry "
                      f"{_pct(layer.selected_change_share)} of the total |change| over {layer.d_sae} features "
                      f"({_pct(layer.selected_baseline)} if spread evenly).", "",
                      "| rank | feature | selected | mean without | mean with | change |",
                      "| --- | --- | --- | --- | --- | --- |"]
            for rank, s in enumerate(layer.top, 1):
                feature = f"[{s.feature}]({s.url})" if s.url else str(s.feature)
                lines.append(f"| {rank} | {feature} | {'yes' if s.selected else ''} | {s.mean_without:.4g} | "
                             f"{s.mean_with:.4g} | {s.change:+.4g} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def _pairs(values: list[str], option: str) -> dict[str, str]:
    """`["a=x", "b=y"]` -> `{"a": "x", "b": "y"}`, naming the option of a malformed entry."""
    pairs = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise SystemExit(f"{option} takes NAME=VALUE entries, got {value!r}.")
        pairs[key] = rest
    return pairs


def _subspace_source(args: argparse.Namespace, model: PeftModel, tokenizer: Any) -> tuple[SAILSConfig, str]:
    """The SAILSConfig whose features define the subspace, and a label saying where they come from."""
    if args.subspace_from and args.sae:
        raise SystemExit("Give either --subspace_from or --sae (with --sae_ids and --harmful_dataset), not both.")
    if args.subspace_from:
        return SAILSConfig.from_pretrained(args.subspace_from), f"the sails_config.json of `{args.subspace_from}`"
    if args.sae:
        if not args.sae_ids or not args.harmful_dataset:
            raise SystemExit("--sae needs --sae_ids LAYER=ID ... and --harmful_dataset (requests with refusals and "
                             "compliances) to select the features that define the subspace.")
        try:
            sae_ids = {int(layer): sae_id for layer, sae_id in _pairs(args.sae_ids, "--sae_ids").items()}
        except ValueError:
            raise SystemExit(f"--sae_ids keys must be layer indices, got {args.sae_ids}.") from None
        config = SAILSConfig(sae_release=args.sae, sae_ids=sae_ids, top_k=args.top_k,
                             variance_threshold=args.variance_threshold, selection_batch_size=args.batch_size)
        harmful = load_dataset(args.harmful_dataset, split=args.split)
        harmful = harmful.select(range(min(args.selection_samples, len(harmful))))
        pairs = [to_chat(harmful, args.prompt_column, column)
                 for column in (args.refusal_column, args.compliance_column)]
        with model.disable_adapter():
            config = select_features(model, tokenizer, config, *pairs, show_progress=not args.quiet)
        return config, f"the top {args.top_k} per layer selected here on `{args.harmful_dataset}`"
    try:
        return SAILSConfig.from_pretrained(args.adapter), "the adapter's own sails_config.json"
    except FileNotFoundError:
        raise SystemExit(f"{args.adapter!r} is a plain LoRA adapter (no sails_config.json): say which subspace to "
                         "measure it against with --subspace_from SAILS_ADAPTER, or with --sae RELEASE --sae_ids "
                         "LAYER=ID ... --harmful_dataset DATA.") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peft-sails inspect",
        description="Show what a SAILS or plain LoRA adapter learned, in SAE features: how much of each update lies "
                    "in the SAILS subspace (against a random subspace) and which SAE features it moves most.")
    parser.add_argument("adapter", help="Adapter folder or Hub repo id (SAILS, or plain LoRA with a subspace option).")
    parser.add_argument("--base", help="Base model id or folder (default: the adapter's base_model_name_or_path).")
    parser.add_argument("--output_dir", help="Where report.md, report.json and the PNGs go (default: "
                                             "inspect-<adapter name>).")
    parser.add_argument("--prompts", nargs="+", default=[], metavar="NAME=DATA",
                        help="Prompt sets for the feature view, e.g. harmful=data/harmful benign=xstest: a local "
                             "jsonl/csv/parquet file or folder, a Hub dataset id or a set peft_sails.eval knows.")
    parser.add_argument("--prompt_column", default="prompt",
                        help="Prompt column of the prompt sets and of --harmful_dataset.")
    parser.add_argument("--split", default="train", help="Split of the prompt sets and of --harmful_dataset.")
    parser.add_argument("--max_prompts", type=int, default=256, help="Use the first N prompts of each set.")
    parser.add_argument("--token_scope", choices=TOKEN_SCOPES, default="last_prompt",
                        help="Tokens averaged in the feature view: the last prompt token or every prompt token.")
    parser.add_argument("--top_n", type=int, default=20, help="Features shown per layer and prompt set.")
    group = parser.add_argument_group("subspace of a plain LoRA adapter (a SAILS adapter uses its sails_config.json)")
    group.add_argument("--subspace_from", metavar="SAILS_ADAPTER",
                       help="Use the SAE and features of this SAILS adapter (folder or Hub id).")
    group.add_argument("--sae", metavar="RELEASE", help="sae-lens release, Hub repo or folder of the SAEs.")
    group.add_argument("--sae_ids", nargs="+", default=[], metavar="LAYER=ID", help="SAE id per layer.")
    group.add_argument("--harmful_dataset", help="Requests with a refusal and a compliance (as LLM-LAT/harmful-dataset)"
                                                 ": the features are selected on it, as SAILS does.")
    group.add_argument("--refusal_column", default="chosen", help="Refusal column of --harmful_dataset.")
    group.add_argument("--compliance_column", default="rejected", help="Compliance column of --harmful_dataset.")
    group.add_argument("--selection_samples", type=int, default=512, help="Rows of --harmful_dataset used.")
    group.add_argument("--top_k", type=int, default=64, help="Features selected per layer.")
    group.add_argument("--variance_threshold", type=float, default=0.8, help="Variance the subspace keeps.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random subspaces of the baseline.")
    parser.add_argument("--batch_size", type=int, default=8, help="Batch size of the forward passes.")
    parser.add_argument("--dtype", default="auto", help="Model dtype: auto, bfloat16, float32...")
    parser.add_argument("--device", default=None, help="Device (default: the first GPU, else the CPU).")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    parser.add_argument("--verbose", action="store_true", help="Show the libraries' own progress bars, logs and "
                        "deprecation warnings (hidden by default).")
    return parser


def cli(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with quiet_libraries(args.verbose):
        report, paths = _inspect(args)
    _print_summary(report, paths)


def _inspect(args: argparse.Namespace) -> tuple[AdapterInspection, dict[str, Path]]:
    from .eval import load_model_for_eval, load_prompt_set  # only the command line needs the evaluation package

    if args.quiet:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    prompt_sets = {name: load_prompt_set(source, split=args.split, limit=args.max_prompts,
                                         prompt_column=args.prompt_column)
                   for name, source in _pairs(args.prompts, "--prompts").items()}
    model, tokenizer = load_model_for_eval(args.base, adapter=args.adapter, dtype=args.dtype, device=args.device)
    source, label = _subspace_source(args, model, tokenizer)
    source.selection_batch_size = args.batch_size
    report = inspect_adapter(model, tokenizer, source, prompt_sets, top_n=args.top_n, token_scope=args.token_scope,
                             seed=args.seed, show_progress=not args.quiet, adapter=args.adapter, subspace_source=label)
    output_dir = Path(args.output_dir or f"inspect-{Path(args.adapter.rstrip('/')).name}")
    return report, report.save(output_dir)


def _print_summary(report: AdapterInspection, paths: dict[str, Path]) -> None:
    for group, stats in report.summary.items():
        if stats["n_modules"]:
            print(f"{group}: {_pct(stats['mean_share'])} of ||ΔW||² in the SAILS subspace over {stats['n_modules']} "
                  f"modules (random: k/d {_pct(stats['mean_baseline'])}, draw {_pct(stats['mean_random_share'])})")
    for shifts in report.prompt_sets:
        for layer in shifts.layers:
            top = ", ".join(f"#{s.feature}{'*' if s.selected else ''} {s.change:+.3g}" for s in layer.top[:5])
            print(f"{shifts.name}, layer {layer.layer}: {top}  (* selected)")
    print("Files:\n" + "\n".join(f"  {key}: {path}" for key, path in paths.items()))


if __name__ == "__main__":
    cli()
