"""Capability scorers: `scorer(response, reference) -> float` in [0, 1]."""

from __future__ import annotations

import re
import string
from collections.abc import Callable

Scorer = Callable[[str, str], float]


def normalise_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(response: str, reference: str) -> float:
    """1.0 when the normalised response equals the normalised reference."""
    return float(normalise_answer(response) == normalise_answer(reference))


def contains_reference(response: str, reference: str) -> float:
    """1.0 when the normalised reference appears, as whole words, in the normalised response (for chat models that
    answer in a sentence)."""
    return float(f" {normalise_answer(reference)} " in f" {normalise_answer(response)} ")


SCORERS: dict[str, Scorer] = {"exact": exact_match, "contains": contains_reference}
