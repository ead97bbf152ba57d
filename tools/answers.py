"""Reading a final answer out of free text: the last number, a multiple-choice letter, a normalised string.

Shared by the reference-answer and calculator tools, which must agree on what a candidate claimed.
"""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

_NUMBER = re.compile(r"(?<![\w.])[-−]?\d[\d,]*(?:\.\d+)?(?:/\d+)?(?![\w])")
_CHOICE = re.compile(r"\b(?:answer|option|choice)?\s*(?:is|:)?\s*\(?([A-H])\)?(?=[\s.,;:)]|$)")


def numbers_in(text: str) -> list[Fraction]:
    """Every number written in `text`, in order; thousands separators and fractions understood."""
    found = []
    for match in _NUMBER.finditer(text):
        raw = match.group(0).replace(",", "").replace("−", "-")
        try:
            found.append(Fraction(raw))
        except (ValueError, ZeroDivisionError):
            continue
    return found


def final_number(text: str) -> Fraction | None:
    """The answer a candidate commits to: the number after its last '=' or 'answer', else its last number."""
    for marker in ("answer is", "answer:", "="):
        position = text.lower().rfind(marker)
        if position >= 0:
            tail = numbers_in(text[position + len(marker) :])
            if tail:
                return tail[0]
    found = numbers_in(text)
    return found[-1] if found else None


def final_choice(text: str, letters: str = "ABCDEFGH") -> str | None:
    """The multiple-choice letter a candidate picked (the last one it states), if any."""
    picked = [m.group(1) for m in _CHOICE.finditer(text.upper()) if m.group(1) in letters]
    return picked[-1] if picked else None


def normalise(text: str) -> str:
    """Case-, accent-, punctuation- and whitespace-insensitive form for exact matching."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(text.split())
