"""Reading the answer a candidate commits to, strictly, and comparing it with a gold answer through math-verify;
also a multiple-choice letter and a normalised string.

The reference-answer tool is the one final-answer check; the calculator checks the steps, not the answer.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, TypeVar

# Explicit final forms, anywhere in the text: `The answer is N`, `Answer: N`, `#### N`, `\boxed{N}` (one level of
# nested braces, for \boxed{\frac{1}{2}}).
_EXPLICIT = re.compile(
    r"(?:\banswer\s+is\b:?|\banswer\s*:|^[ \t]*####)[ \t]*(?P<tail>[^\n]*)|\\boxed\{(?P<boxed>(?:[^{}]|\{[^{}]*\})*)\}",
    re.IGNORECASE | re.MULTILINE,
)
# A sentence ends at a full stop that is not a decimal point, or at ';' / '!' / '?'.
_SENTENCE_END = re.compile(r"(?<!\d)\.|\.(?!\d)|[;!?]")
_NUMBER = re.compile(r"(?<![\w.])[-−]?\d[\d,]*(?:\.\d+)?(?:/\d+)?(?![\w])")
_CHOICE = re.compile(r"\b(?:answer|option|choice)?\s*(?:is|:)?\s*\(?([A-H])\)?(?=[\s.,;:)]|$)")
# Longer than any answer a candidate commits to: what is parsed is bounded before sympy sees it.
MAX_ANSWER_CHARS = 200
# How long one math-verify parse or comparison may take (it calls sympy, which can take very long on odd input).
MATH_VERIFY_DEADLINE_S = 10.0

# We bound math-verify ourselves (see `bounded`), so its warning that its own timeouts are disabled is noise.
for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).setLevel(logging.ERROR)


class AnswerCheckTimeout(RuntimeError):
    """math-verify did not finish within its deadline."""


T = TypeVar("T")


def bounded(function: Callable[..., T], *args: Any, deadline_s: float = MATH_VERIFY_DEADLINE_S) -> T:
    """`function(*args)` run in a daemon thread, waited for at most `deadline_s`.

    math-verify's own timeouts use signal.alarm, which works only in a process's main thread: episodes run in
    threads and Ray workers, where every comparison would fail. So it is called with its timeouts disabled, and
    bounded here without signals. A call past its deadline is left to finish on its own (a thread cannot be
    killed); its answer is dropped and the caller gets AnswerCheckTimeout.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = function(*args)
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="prefsmith-math-verify", daemon=True).start()
    if not done.wait(deadline_s):
        raise AnswerCheckTimeout(f"math-verify took longer than {deadline_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _math_verify() -> tuple[Callable[..., list[Any]], Callable[..., bool]]:
    """math-verify's parse and verify, imported in the caller's thread: the first import (sympy) takes seconds,
    which must not count against a comparison's deadline."""
    from math_verify import parse, verify

    return parse, verify


def parse_value(text: str) -> list[Any]:
    """math-verify's reading of `text` (a number, fraction, decimal, LaTeX, with units): [] when it finds none."""
    parse, _ = _math_verify()
    return bounded(lambda: parse(text[:MAX_ANSWER_CHARS], parsing_timeout=None))


def same_value(gold: str, claimed: str) -> bool:
    """Whether `claimed` is the value `gold` is, by math-verify (1/2 = 0.5 = \\frac{1}{2}, 1,000 = 1000, 12 apples
    = 12); False when either holds no value."""
    gold_value, claimed_value = parse_value(gold), parse_value(claimed)
    if not gold_value or not claimed_value:
        return False
    _, verify = _math_verify()
    return bool(bounded(lambda: verify(gold_value, claimed_value, timeout_seconds=None)))


def as_fraction(text: str) -> Fraction | None:
    """`text` as an exact plain number (thousands separators allowed, a/b fractions), else None.

    A shim for what math-verify does not do: an exact relative tolerance (it compares to a fixed number of
    digits) and a value for a number of hundreds of digits that no float holds.
    """
    match = _NUMBER.fullmatch(text.strip().rstrip("."))
    if match is None:
        return None
    try:
        return Fraction(match.group(0).replace(",", "").replace("−", "-"))
    except (ValueError, ZeroDivisionError):
        return None


def numbers_in(text: str) -> list[str]:
    """Every plain number written in `text`, in order, as written."""
    return [m.group(0) for m in _NUMBER.finditer(text)]


@dataclass(frozen=True)
class Committed:
    """What a candidate commits to: `answer` (the text of its value), or `problem` saying why it commits to none
    (or to several); `form` is how it said it ('explicit' or 'final line')."""

    answer: str | None
    form: str
    problem: str | None = None


def _value_text(tail: str) -> str:
    """The value a commitment states: its first sentence, after its last '=' ('Answer: 6 x 8 = 48' states 48)."""
    if "\\" not in tail:  # LaTeX keeps its full stops and braces as they are
        end = _SENTENCE_END.search(tail)
        tail = tail[: end.start()] if end else tail
    return tail.rsplit("=", 1)[-1].strip().strip("$").strip()


def _single(value: str, form: str) -> Committed | str:
    """`value` if it states one value; a Committed problem when it states none or several (12 or 13)."""
    where = "explicit answer" if form == "explicit" else form
    if not value or not (numbers_in(value) or "\\" in value):
        return Committed(None, form, f"the {where} states no number")
    if "\\" not in value:
        distinct = list(dict.fromkeys(n.replace(",", "") for n in numbers_in(value)))
        if len(distinct) > 1:
            return Committed(None, form, f"the {where} states several values ({', '.join(distinct)})")
    return value


def committed_answer(text: str) -> Committed:
    """The answer `text` commits to, read strictly: its explicit final forms (`The answer is N`, `Answer: N`,
    `#### N`, `\\boxed{N}`), which must all state the same value, or else the number its final line states."""
    explicit = []
    for match in _EXPLICIT.finditer(text):
        boxed = match.group("boxed")
        value = _value_text(boxed if boxed is not None else match.group("tail"))
        single = _single(value, "explicit")
        if isinstance(single, Committed):
            return single
        explicit.append(single)
    if explicit:
        distinct = list(dict.fromkeys(explicit))
        for other in distinct[1:]:
            if not same_value(distinct[0], other):
                return Committed(None, "explicit", f"commits to two different answers ({distinct[0]}, {other})")
        return Committed(distinct[-1], "explicit")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return Committed(None, "final line", "the answer is empty")
    single = _single(lines[-1].rsplit("=", 1)[-1].strip(), "final line")
    if isinstance(single, Committed):
        return single
    return Committed(single, "final line")


def final_choice(text: str, letters: str = "ABCDEFGH") -> str | None:
    """The multiple-choice letter a candidate picked (the last one it states), if any."""
    picked = [m.group(1) for m in _CHOICE.finditer(text.upper()) if m.group(1) in letters]
    return picked[-1] if picked else None


def normalise(text: str) -> str:
    """Case-, accent-, punctuation- and whitespace-insensitive form for exact matching."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(text.split())
