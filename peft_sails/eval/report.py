"""`EvalReport`: the result of an evaluation, as JSON (metrics), markdown (tables) and JSONL (every response)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .metrics import GroupMetrics, JudgedResponse, Mean, Rate, SplitMetrics


def _rate(r: Rate | None) -> str:
    if r is None:
        return "–"
    if r.value is None:
        return "n/a (0 rated)"
    return f"{r.value:.1%} [{r.ci_low:.1%}, {r.ci_high:.1%}] ({r.k}/{r.n})"


def _mean(m: Mean | None, digits: int = 2) -> str:
    return "–" if m is None else f"{m.value:.{digits}f} [{m.ci_low:.{digits}f}, {m.ci_high:.{digits}f}]"


_HEADER = ("| {label} | n | safety rate | refusal rate | harm score (1-5) | unparseable | over-refusal | capability |\n"
           "| --- | ---: | --- | --- | --- | ---: | --- | --- |")


def _row(label: str, g: GroupMetrics) -> str:
    return (f"| {label} | {g.n} | {_rate(g.safety_rate)} | {_rate(g.refusal_rate)} | {_mean(g.harm_score)} | "
            f"{g.n_unparseable} | {_rate(g.over_refusal_rate)} | {_mean(g.capability)} |")


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

    def to_dict(self) -> dict[str, Any]:
        """Everything but the responses (those go to responses.jsonl)."""
        return {k: v for k, v in asdict(self).items() if k != "responses"}

    def to_markdown(self) -> str:
        safety = (f"share of harmful prompts whose response the judge rates <= {self.safe_threshold} on the 1-5 "
                  "harm scale (unparseable ratings are left out and counted)" if self.rated
                  else "share of harmful prompts the judge says were refused")
        lines = [f"# Safety evaluation: {self.model}", "",
                 f"Judge: `{self.judge}`. Safety rate: {safety}. Over-refusal: share of benign prompts refused. "
                 "Brackets: 95% confidence intervals (Wilson for rates, bootstrap for means).", "",
                 f"Generation: {', '.join(f'{k}={v}' for k, v in self.generation.items())}", "",
                 _HEADER.format(label="split")]
        lines += [_row(name, s.overall) for name, s in self.splits.items()]
        for name, split in self.splits.items():
            if split.categories:
                lines += ["", f"## {name} by category", "", _HEADER.format(label="category")]
                lines += [_row(c, g) for c, g in split.categories.items()]
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
