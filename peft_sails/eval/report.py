"""`EvalReport`: the result of an evaluation, as JSON (metrics), markdown (tables) and JSONL (every response)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .metrics import GroupMetrics, JudgedResponse, Mean, Rate, SplitMetrics


def _rate(r: Rate | None, no_value: str = "0 rated") -> str:
    if r is None:
        return "–"
    if r.value is None:
        return f"n/a ({no_value})"
    return f"{r.value:.1%} [{r.ci_low:.1%}, {r.ci_high:.1%}] ({r.k}/{r.n})"


def _mean(m: Mean | None, digits: int = 2) -> str:
    return "–" if m is None else f"{m.value:.{digits}f} [{m.ci_low:.{digits}f}, {m.ci_high:.{digits}f}]"


_HEADER = ("| {label} | n | degenerate | safety rate | refusal rate | harm score (1-5) | unparseable | over-refusal | "
           "capability |\n| --- | ---: | ---: | --- | --- | --- | ---: | --- | --- |")


def _row(label: str, g: GroupMetrics) -> str:
    no_value = "all degenerate" if g.n_degenerate == g.n else "0 rated"
    degenerate = f"{g.n_degenerate} ({g.degenerate_share:.0%})" if g.n_degenerate else "0"
    return (f"| {label} | {g.n} | {degenerate} | {_rate(g.safety_rate, no_value)} | "
            f"{_rate(g.refusal_rate, no_value)} | {_mean(g.harm_score)} | {g.n_unparseable} | "
            f"{_rate(g.over_refusal_rate, no_value)} | {_mean(g.capability)} |")


def _score(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "–" if value is None else str(value)


def _lm_eval_table(lm_eval: dict[str, Any]) -> list[str]:
    """The lm-evaluation-harness scores, one row per task and metric."""
    settings = ", ".join(f"{k}={v}" for k, v in lm_eval.get("settings", {}).items() if v is not None)
    lines = ["", "## Capability: lm-evaluation-harness", "",
             f"lm-eval {lm_eval.get('lm_eval_version') or ''} on the same model{f' ({settings})' if settings else ''}. "
             "± is lm-eval's standard error; ↑/↓: higher/lower is better.", "",
             "| task | metric | value | ± stderr | n | few-shot |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for task, scores in lm_eval["tasks"].items():
        for metric, m in scores["metrics"].items():
            arrow = {True: " ↑", False: " ↓"}.get(m.get("higher_is_better"), "")
            label = f"{task} (group)" if scores.get("group") else task
            lines.append(f"| {label} | {metric}{arrow} | {_score(m['value'])} | {_score(m['stderr'])} | "
                         f"{_score(scores.get('n'))} | {_score(scores.get('num_fewshot'))} |")
    return lines


def _degenerate_warning(split: str, g: GroupMetrics) -> str:
    reasons = ", ".join(f"{reason} {count}" for reason, count in g.degenerate_reasons.items())
    consequence = ("no rate or mean can be computed for it" if g.n_degenerate == g.n
                   else "they are left out of every rate and mean")
    return f"{g.n_degenerate} of {g.n} responses in split {split!r} are degenerate ({reasons}); {consequence}."


@dataclass
class EvalReport:
    model: str
    judge: str
    rated: bool  # the judge rates harm 1-5: safety rate = share rated <= safe_threshold
    safe_threshold: int
    generation: dict[str, Any]
    splits: dict[str, SplitMetrics]
    responses: list[JudgedResponse] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    # lm-evaluation-harness scores on the same model (`peft_sails.eval.capability.run_lm_eval`), None if not run
    lm_eval: dict[str, Any] | None = None

    def warnings(self) -> list[str]:
        """One line per split with degenerate responses (empty, whitespace-only or one token repeated)."""
        return [_degenerate_warning(name, s.overall) for name, s in self.splits.items() if s.overall.n_degenerate]

    def to_dict(self) -> dict[str, Any]:
        """Everything but the responses (those go to responses.jsonl), and the warnings."""
        return {**{k: v for k, v in asdict(self).items() if k != "responses"}, "warnings": self.warnings()}

    def to_markdown(self) -> str:
        safety = (f"share of harmful prompts whose response the judge rates <= {self.safe_threshold} on the 1-5 "
                  "harm scale (unparseable ratings are left out and counted)" if self.rated
                  else "share of harmful prompts the judge says were refused")
        lines = [f"# Safety evaluation: {self.model}", "",
                 f"Judge: `{self.judge}`. Safety rate: {safety}. Over-refusal: share of benign prompts refused. "
                 "Degenerate: responses that are empty, whitespace or one token repeated; they are neither "
                 "refusals nor answers and are left out of every rate and mean. "
                 "Brackets: 95% confidence intervals (Wilson for rates, bootstrap for means).", ""]
        lines += [f"> WARNING: {w}\n" for w in self.warnings()]
        lines += [f"Generation: {', '.join(f'{k}={v}' for k, v in self.generation.items())}", "",
                  _HEADER.format(label="split")]
        lines += [_row(name, s.overall) for name, s in self.splits.items()]
        for name, split in self.splits.items():
            if split.categories:
                lines += ["", f"## {name} by category", "", _HEADER.format(label="category")]
                lines += [_row(c, g) for c, g in split.categories.items()]
        if self.lm_eval:
            lines += _lm_eval_table(self.lm_eval)
        return "\n".join(lines) + "\n"

    def save(self, output_dir: str | Path) -> dict[str, Path]:
        """Write eval.json, eval.md and responses.jsonl into `output_dir`; return their paths."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "eval.json", "markdown": out / "eval.md", "responses": out / "responses.jsonl"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        paths["markdown"].write_text(self.to_markdown())
        with paths["responses"].open("w") as f:
            for r in self.responses:
                f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
        return paths
