"""Model cards for SAILS adapters: the SAE, the subspace and a table of the chosen features.

    peft-sails card ADAPTER_DIR [--repo_id org/name] [--training_json t.json] [--eval_json e.json]

The card is built with `huggingface_hub.ModelCard` from `model_cards/sails_adapter.md` and the adapter's
`adapter_config.json` + `sails_config.json`; training settings and evaluation results come from
`sails_training.json` / `sails_eval.json` in the adapter folder, or from the arguments.
"""

from __future__ import annotations

import argparse
import json
import os
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .sidecar import atomic_write_text

if TYPE_CHECKING:
    from .config import SAILSConfig

TEMPLATE = files("peft_sails.model_cards") / "sails_adapter.md"
TRAINING_NAME = "sails_training.json"
EVAL_NAME = "sails_eval.json"
NEURONPEDIA = "https://www.neuronpedia.org"
TAGS = ["peft", "lora", "sails", "safety", "sae", "transformers"]
PAPER = "arxiv:2512.23260"


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _hub_id(name: Optional[str]) -> Optional[str]:
    """`name` if it can be a Hub model id (not a local folder), else None."""
    if not name or os.path.exists(name) or os.path.isabs(name) or name.count("/") > 1:
        return None
    return name


def _eval_results(rows: list[dict[str, Any]]) -> list[EvalResult]:
    """`[{"dataset_name", "dataset_type", "metric_type", "metric_value", ...}]` -> model-index entries."""
    required = ("dataset_name", "dataset_type", "metric_type", "metric_value")
    results = []
    for row in rows:
        missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(f"Evaluation result {row} lacks {missing}; each needs {list(required)}.")
        results.append(EvalResult(task_type=row.get("task_type", "text-generation"), **{
            k: v for k, v in row.items() if k != "task_type"}))
    return results


def eval_report_results(report: dict[str, Any]) -> list[dict[str, Any]]:
    """A `peft-sails eval` report (eval.json, `EvalReport.to_dict()`) -> model-index rows: per split its safety
    rate, over-refusal rate and capability score (where measured), and per lm-evaluation-harness task each metric
    (`dataset: {type: <task>, name: <task>}`, `source: lm-evaluation-harness`). Values only: the confidence
    intervals and standard errors stay in eval.json / eval.md."""
    rows: list[dict[str, Any]] = []
    for split, metrics in report.get("splits", {}).items():
        overall = metrics["overall"]
        for key, metric_type, metric_name in (("safety_rate", "safety_rate", "Safety rate"),
                                              ("over_refusal_rate", "over_refusal_rate", "Over-refusal rate"),
                                              ("capability", "capability", "Capability (reference match)")):
            value = (overall.get(key) or {}).get("value")
            if value is not None:
                rows.append({"dataset_name": split, "dataset_type": split, "metric_type": metric_type,
                             "metric_name": metric_name, "metric_value": value})
    lm_eval = report.get("lm_eval") or {}
    for task, scores in lm_eval.get("tasks", {}).items():
        shots = scores.get("num_fewshot")
        for metric, m in scores["metrics"].items():
            if not isinstance(m["value"], (int, float)):
                continue
            rows.append({"dataset_name": task, "dataset_type": task, "metric_type": metric.split(" (")[0],
                         "metric_name": f"{metric} ({shots}-shot, lm-eval)" if shots is not None else metric,
                         "metric_value": m["value"], "source_name": "lm-evaluation-harness",
                         "source_url": "https://github.com/EleutherAI/lm-evaluation-harness"})
    return rows


def _fit_cell(fit: Optional[dict[str, float]], threshold: float) -> str:
    if not fit:
        return "not measured"
    flag = " ⚠ below the warning threshold" if not fit["explained_variance"] >= threshold else ""
    return f"{fit['explained_variance']:.1%} / {fit['l0']:.1f}{flag}"


def _feature_tables(layers: list[int], features: Optional[dict[int, list[dict]]],
                    per_layer: dict[str, dict]) -> list[dict[str, Any]]:
    """One table per layer of the chosen features (rank, id with its Neuronpedia link, Δ, ρ)."""
    tables = []
    for layer in layers:
        npid = per_layer.get(str(layer), {}).get("neuronpedia_id")
        tables.append({"layer": layer, "features": [
            {"rank": i + 1, "id": f["id"], "delta": f"{f['delta']:+.4g}", "rho": f"{f['rho']:.4f}",
             "url": f"{NEURONPEDIA}/{npid}/{f['id']}" if npid else None}
            for i, f in enumerate((features or {}).get(layer, []))
        ]})
    return tables


def _subspace_summary(stats: dict[str, Any], variance_threshold: float) -> str:
    return (f"{stats['subspace_dim']} orthonormal directions ({stats['n_principal_rows']} principal, "
            f"{stats['n_random_rows']} random fill), keeping {stats['variance_kept']:.1%} of the variance of the "
            f"stacked decoder rows ({stats['n_directions_at_threshold']} directions reach {variance_threshold:.0%})")


def build_card(
    adapter_dir: str | os.PathLike,
    repo_id: Optional[str] = None,
    training: Optional[dict[str, Any]] = None,
    eval_results: Optional[list[dict[str, Any]] | dict[str, Any]] = None,
    config: Optional["SAILSConfig"] = None,
) -> ModelCard:
    """Render the card of a SAILS adapter folder (no network); `config` defaults to the one saved there.
    `eval_results` (or `sails_eval.json`): model-index rows, or a `peft-sails eval` report (eval.json), whose safety
    and lm-eval scores become rows (see `eval_report_results`)."""
    from .config import SAILSConfig

    adapter_dir = Path(adapter_dir)
    config = config or SAILSConfig.from_pretrained(str(adapter_dir))
    training = {**(_read_json(adapter_dir / TRAINING_NAME) or {}), **(training or {})}
    eval_rows = eval_results if eval_results is not None else (_read_json(adapter_dir / EVAL_NAME) or [])
    if isinstance(eval_rows, dict):  # a whole `peft-sails eval` report (eval.json)
        eval_rows = eval_report_results(eval_rows)
    stats = config.subspace_stats or {}
    per_layer = stats.get("per_layer", {})
    base = config.base_model_name_or_path or "unknown base model"
    hub_base = _hub_id(config.base_model_name_or_path)
    name = (repo_id or f"{Path(base).name}-sails").split("/")[-1]
    repo_id = repo_id or f"<your-org>/{name}"

    feature_tables = _feature_tables(config.layers, config.features, per_layer)
    reader_stats = stats.get("readers") or {}
    reader_tables = (_feature_tables(config.layers, config.reader_features, reader_stats.get("per_layer", {}))
                     if config.reader_features is not None else None)
    layer_rows = [{"layer": layer, "sae_id": config.sae_ids[layer],
                   "n_features": per_layer.get(str(layer), {}).get("n_features", "?"),
                   "n_directions": per_layer.get(str(layer), {}).get("n_directions_at_threshold", "?"),
                   "fit": _fit_cell((config.sae_fit or {}).get(layer), config.min_explained_variance)}
                  for layer in config.layers]
    n_adapter, n_base = stats.get("n_adapter_params"), stats.get("n_base_params")
    trainable = (f"{n_adapter:,} = {n_adapter / n_base:.3%} of the {n_base:,} base-model parameters"
                 if n_adapter and n_base else "see adapter_model.safetensors")
    subspace = _subspace_summary(stats, config.variance_threshold) if stats else "not recorded"
    if config.reader_features is not None:
        readers = _subspace_summary(reader_stats, config.variance_threshold) if reader_stats else "not recorded"
        overlap = stats.get("reader_writer_overlap")
        subspace = (f"two-sided (experimental). Writers (`{', '.join(config.writer_modules)}`): {subspace}. "
                    f"Readers (`{', '.join(config.reader_modules)}`): {readers}")
        if overlap is not None:
            subspace += f". Overlap of the two bases ‖U_r U_wᵀ‖²/r: {overlap:.3f}"
    data = ModelCardData(
        base_model=hub_base, library_name="peft", pipeline_tag="text-generation",
        tags=TAGS + ([f"base_model:adapter:{hub_base}"] if hub_base else []) + [PAPER],
        model_name=name, eval_results=_eval_results(eval_rows) or None,
        datasets=training.get("datasets"),
    )
    return ModelCard.from_template(
        data, template_path=str(TEMPLATE), model_name=name, repo_id=repo_id, base_model=base,
        base_model_url=f"https://huggingface.co/{hub_base}" if hub_base else None, r=config.r, lora_alpha=config.lora_alpha,
        target_modules=", ".join(sorted(config.target_modules or [])), trainable_summary=trainable,
        sae_release=config.sae_release, sae_summary=f"{len(config.layers)} layer(s): {config.layers}",
        subspace_summary=subspace, top_k=config.top_k, token_scope=config.token_scope,
        min_firing_rate=config.min_firing_rate, variance_pct=f"{config.variance_threshold:.0%}",
        fit_threshold=f"{config.min_explained_variance:.0%}",
        layer_rows=layer_rows, feature_tables=feature_tables, reader_tables=reader_tables,
        reader_token_scope=config.reader_token_scope,
        training={k: ", ".join(v) if isinstance(v, list) else v for k, v in training.items()},
        eval_rows=eval_rows,
    )


def write_card(adapter_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Render the card and save it (atomically) as `README.md` in the adapter folder."""
    path = Path(adapter_dir) / "README.md"
    atomic_write_text(str(path), str(build_card(adapter_dir, **kwargs)))
    return path


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="peft-sails card", description="(Re)write the model card of a SAILS adapter.")
    parser.add_argument("adapter_dir", help="A saved SAILS adapter folder (with sails_config.json).")
    parser.add_argument("--repo_id", help="Hub repo id shown in the card and its usage snippets.")
    parser.add_argument("--training_json", type=Path, help="JSON dict of training settings (and 'datasets').")
    parser.add_argument("--eval_json", type=Path,
                        help="JSON list of {dataset_name, dataset_type, metric_type, metric_value[, metric_name]}, or "
                             "the eval.json of `peft-sails eval` (safety and lm-eval scores become model-index rows).")
    args = parser.parse_args(argv)
    load = lambda path: json.loads(path.read_text()) if path else None  # noqa: E731
    path = write_card(args.adapter_dir, repo_id=args.repo_id, training=load(args.training_json),
                      eval_results=load(args.eval_json))
    print(f"Wrote {path}")
