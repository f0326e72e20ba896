"""Degenerate responses: text that is neither a refusal nor an answer (nothing at all, or one token written over and
over). The metrics leave them out of every rate and mean and count them apart; the report warns about them."""

from __future__ import annotations

import string

MIN_REPEATED_TOKENS = 4
MIN_REPEATED_CHARACTERS = 6


def _token(word: str) -> str:
    """A word as compared for repetition: lower case, surrounding punctuation removed (punctuation alone is kept)."""
    return word.strip(string.punctuation).lower() or word


def degenerate_reason(response: str) -> str | None:
    """Why `response` is degenerate, or None when it is not:

    - "empty": no characters at all;
    - "whitespace": only whitespace;
    - "repetition": at least `MIN_REPEATED_TOKENS` (4) whitespace-separated tokens that are all one token, case and
      surrounding punctuation ignored ("the the The the.", "! ! ! !"), or, whitespace ignored, one character written
      at least `MIN_REPEATED_CHARACTERS` (6) times ("!!!!!!!!").

    Only a whole response made of one unit counts: short answers ("Paris.", "4", "No.", "111", "no no no") and
    text that merely ends in a loop are not degenerate.
    """
    if not response:
        return "empty"
    words = response.split()
    if not words:
        return "whitespace"
    characters = "".join(words)
    if len(characters) >= MIN_REPEATED_CHARACTERS and len(set(characters)) == 1:
        return "repetition"
    if len(words) >= MIN_REPEATED_TOKENS and len({_token(w) for w in words}) == 1:
        return "repetition"
    return None
