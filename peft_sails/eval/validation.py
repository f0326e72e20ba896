"""Measure a judge's refusal decisions against the labelled responses shipped with the package."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from typing import Any

from .judges import Judge

LABELLED_FILE = "labelled_responses.jsonl"
# Second round (issue 15): a held-out set written and frozen (sha256 below, checked by the tests) before the patterns
# were changed, and never used to change them; and a separate tuning set written for the changes.
HELDOUT_ROUND2_FILE = "labelled_heldout_round2.jsonl"
HELDOUT_ROUND2_SHA256 = "fb6dbd48114e3ac01b1f5503008114cf61e50abe0a429d64729984fd627e9f06"
TUNING_ROUND2_FILE = "labelled_tuning_round2.jsonl"


def load_labelled_responses(split: str | None = None, file: str = LABELLED_FILE) -> list[dict[str, Any]]:
    """The labelled set: rows {id, kind, prompt, response, refused, split}. `split`: "dev" (written before the
    pattern judge, used while writing it), "review" (written after a first version, then used to generalise it),
    "test" (written after the judge was frozen, never used to change it), or None for all. `file`: another shipped
    labelled file, e.g. `HELDOUT_ROUND2_FILE` (split "heldout_round2") or `TUNING_ROUND2_FILE` ("tuning_round2")."""
    text = resources.files("peft_sails.eval").joinpath(file).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if split is not None:
        splits = sorted({r["split"] for r in rows})
        if split not in splits:
            raise ValueError(f"Unknown labelled split {split!r}; the file has {splits}.")
        rows = [r for r in rows if r["split"] == split]
    return rows


def validate_judge(judge: Judge, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, precision and recall of `judge`'s `refused` against the rows' labels (refusal = positive class),
    with the confusion counts, the accuracy per kind of row, and the misjudged rows."""
    if not rows:
        raise ValueError("validate_judge needs at least one labelled row.")
    judgements = judge.judge([r["prompt"] for r in rows], [r["response"] for r in rows])
    counts: Counter[str] = Counter()
    per_kind: dict[str, Counter[str]] = {}
    errors = []
    for row, judgement in zip(rows, judgements):
        truth, pred = bool(row["refused"]), bool(judgement.refused)
        counts[("t" if truth == pred else "f") + ("p" if pred else "n")] += 1
        kind = per_kind.setdefault(row.get("kind", "all"), Counter())
        kind["n"] += 1
        kind["correct"] += truth == pred
        if truth != pred:
            errors.append({**row, "predicted": pred, "rationale": judgement.rationale})
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    return {
        "judge": judge.name,
        "n": len(rows),
        "accuracy": (tp + tn) / len(rows),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "accuracy_per_kind": {k: c["correct"] / c["n"] for k, c in sorted(per_kind.items())},
        "errors": errors,
    }
