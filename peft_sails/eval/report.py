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
