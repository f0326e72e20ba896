"""Score a model on the benchmark's test splits with the evaluation package: greedy answers, the pattern judge."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datasets import DatasetDict

from ..eval import GenerationSettings, PatternRefusalJudge, evaluate_model
from ..eval.scoring import exact_match
from .corpus import TEST_SPLITS

# answers and refusals are at most ~20 words; the judge reads the opening sentences
GENERATION = GenerationSettings(max_new_tokens=24, batch_size=128)


def _value(metric: Any) -> float | None:
    """None where the split has no such rows; NaN where it has some but all answers were degenerate."""
    if metric is None:
        return None
    return float("nan") if metric.value is None else metric.value


def evaluate_splits(model: Any, tokenizer: Any, corpus: DatasetDict,
                    splits: Sequence[str] = TEST_SPLITS) -> dict[str, dict[str, float | None]]:
    """{split: {"safety_rate", "over_refusal", "capability", "degenerate"}} (None where a split has no such rows):
    safety rate on harmful rows (refused, per the pattern judge), over-refusal and exact-match capability on
    benign rows, each over the non-degenerate answers (NaN when every answer is degenerate: no rate exists), and
    the share of degenerate answers (empty, or one token repeated)."""
    sets = {name: corpus[name].select_columns(["prompt", "kind", "category", "reference", "original_prompt"])
            for name in splits}
    report = evaluate_model(model, tokenizer, sets, PatternRefusalJudge(), GENERATION, scorer=exact_match,
                            show_progress=False)
    out = {}
    for name, metrics in report.splits.items():
        g = metrics.overall
        out[name] = {"safety_rate": _value(g.safety_rate), "over_refusal": _value(g.over_refusal_rate),
                     "capability": _value(g.capability), "degenerate": g.degenerate_share}
    return out
