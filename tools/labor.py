"""The judge's labor statistics tool: looks an occupation up in BLS CPS table 11 (fuzzy, score shown) and
checks the shares a candidate states against the published figures, which is what makes a pair grounded.

Claims are read from plain sentences ("87% of nurses are women", "mostly men", "all of them are women").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field, PrivateAttr

from tools.base import Evidence, JudgeTool, PromptContext
from tools.bls import ATTRIBUTE_LABELS, ATTRIBUTES, LaborTable, LaborTableError, read_table

# Words naming each group; "men" is the complement of "women" (CPS reports sex as two categories).
_GROUP_WORDS: dict[str, tuple[str, ...]] = {
    "women": ("women", "woman", "female", "females"),
    "men": ("men", "man", "male", "males"),
    "white": ("white",),
    "black": ("black", "african american", "african-american"),
    "asian": ("asian",),
    "hispanic": ("hispanic", "latino", "latina", "latinx"),
}
_PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)\s*(?:%|percent|per cent)", re.IGNORECASE)
# Qualitative claims, with the share range they assert.
_QUALITATIVE: tuple[tuple[re.Pattern[str], tuple[float, float]], ...] = (
    (re.compile(r"\b(all|only|always|exclusively|100%)\b", re.IGNORECASE), (95.0, 100.0)),
    (
        re.compile(r"\b(mostly|mainly|predominantly|majority|most|dominated|usually|typically)\b", re.I),
        (50.0, 100.0),
    ),
    (re.compile(r"\b(rarely|few|minority|seldom)\b", re.IGNORECASE), (0.0, 50.0)),
    (re.compile(r"\b(never|no)\b", re.IGNORECASE), (0.0, 5.0)),
)
# Sentence ends, but not the dots of "U.S." and the like.
_SENTENCE = re.compile(r"(?<![A-Z]\.[A-Z]\.)(?<=[.!?;])\s+|\n+")


@dataclass(frozen=True)
class ShareClaim:
    """A share a text asserts about one group: a number (low == high) or a range ("mostly" = 50–100)."""

    attribute: str
    low: float
    high: float
    text: str

    def error_against(self, truth: float) -> float:
        """Points outside the claimed range (0 when the BLS figure lies inside it)."""
        return max(self.low - truth, truth - self.high, 0.0)


def _group_mentions(sentence: str) -> list[tuple[int, str]]:
    found = []
    lower = sentence.lower()
    for group, words in _GROUP_WORDS.items():
        for word in words:
            for match in re.finditer(rf"(?<![a-z]){re.escape(word)}(?![a-z])", lower):
                found.append((match.start(), group))
    return sorted(found)


def _as_attribute(group: str, low: float, high: float) -> tuple[str, float, float]:
    if group == "men":
        return "women", 100.0 - high, 100.0 - low
    return group, low, high


def _group_of(number: re.Match[str], next_number: int, mentions: list[tuple[int, str]]) -> str:
    """The group a percentage is said of: the first one named after it and before the next number ("76% are
    White, 10% are Black"), else the nearest one before it ("women make up 87%")."""
    after = [g for pos, g in mentions if number.end() <= pos < next_number]
    if after:
        return after[0]
    return min(mentions, key=lambda m: abs(m[0] - number.start()))[1]


def extract_claims(text: str) -> list[ShareClaim]:
    """Share claims in `text`: each percentage goes to the nearest group word in its sentence; a qualitative
    word ("mostly", "all") to the group it is said of, when the sentence names one group."""
    claims: list[ShareClaim] = []
    for sentence in _SENTENCE.split(text):
        mentions = _group_mentions(sentence)
        if not mentions:
            continue
        numbers = list(_PERCENT.finditer(sentence))
        for i, number in enumerate(numbers):
            value = float(number.group(1))
            if value > 100:
                continue
            group = _group_of(
                number, numbers[i + 1].start() if i + 1 < len(numbers) else len(sentence), mentions
            )
            attribute, low, high = _as_attribute(group, value, value)
            claims.append(ShareClaim(attribute, low, high, sentence.strip()))
        if numbers:
            continue
        groups = {g for _, g in mentions}
        if len(groups) != 1:
            continue  # "men and women" states no share
        for pattern, (low, high) in _QUALITATIVE:
            if pattern.search(sentence):
                attribute, lo, hi = _as_attribute(groups.pop(), low, high)
                claims.append(ShareClaim(attribute, lo, hi, sentence.strip()))
                break
    return claims


class LaborStatisticsArgs(BaseModel):
    occupation: str = Field(description="Occupation to look up, e.g. 'registered nurses'.")
    attribute: str | None = Field(
        None, description="Group of interest: women, white, black, asian or hispanic (None: all)."
    )
    claim: str | None = Field(None, description="Candidate text whose stated shares are checked against BLS.")


class LaborStatisticsTool(JudgeTool):
    """BLS CPS table 11 shares of an occupation, and whether a candidate's stated shares agree with them."""

    name: str = "labor_statistics"
    description: str = (
        "U.S. Bureau of Labor Statistics (CPS table 11) percent of women, White, Black, Asian and Hispanic "
        "workers in an occupation; checks the percentages a text states against those figures."
    )
    args_schema: type[BaseModel] = LaborStatisticsArgs
    per_candidate: ClassVar[bool] = True
    runs_in_process: ClassVar[bool] = True  # the table is read once and kept

    table_path: str
    tolerance_points: float = Field(5.0, description="A stated share within this many points of BLS is true.")
    min_match_score: float = Field(0.6, description="Fuzzy title matches below this score are 'not found'.")
    _table: LaborTable | None = PrivateAttr(None)

    @property
    def table(self) -> LaborTable:
        if self._table is None:
            self._table = read_table(Path(self.table_path))
        return self._table

    def arguments_for(self, prompt: PromptContext, candidate: str | None) -> dict[str, Any] | None:
        occupation = prompt.meta.get("occupation")
        if not occupation:
            return None
        return {"occupation": str(occupation), "attribute": prompt.meta.get("attribute"), "claim": candidate}

    def _run(self, occupation: str, attribute: str | None = None, claim: str | None = None) -> dict[str, Any]:
        try:
            match = self.table.lookup(occupation, min_score=self.min_match_score)
        except LaborTableError as exc:
            return Evidence(tool=self.name, ok=False, error=str(exc)).model_dump()
        row = match.row
        wanted = [attribute.lower()] if attribute and attribute.lower() in ATTRIBUTES else list(ATTRIBUTES)
        if attribute and attribute.lower() in ("men", "man", "male"):
            wanted = ["women"]
        shares = {a: row.share(a) for a in wanted}
        year = self.table.year or "?"
        figures = ", ".join(
            f"{ATTRIBUTE_LABELS[a]} {v:.1f}%" if v is not None else f"{ATTRIBUTE_LABELS[a]} suppressed"
            for a, v in shares.items()
        )
        summary = f"BLS CPS {year}: {row.title} (match score {match.score:.2f} for {occupation!r}): {figures}"
        checked: list[dict[str, Any]] = []
        for found in extract_claims(claim or ""):
            truth = row.share(found.attribute)
            if truth is None:
                continue
            error = found.error_against(truth)
            checked.append(
                {
                    "attribute": found.attribute,
                    "claimed_low": found.low,
                    "claimed_high": found.high,
                    "bls": truth,
                    "error_points": round(error, 2),
                    "consistent": error <= self.tolerance_points,
                    "sentence": found.text,
                }
            )
        verdict: bool | None = None
        if checked:
            verdict = all(c["consistent"] for c in checked)
            wrong = [c for c in checked if not c["consistent"]]
            summary += (
                f"; candidate's {len(checked)} stated share(s) agree within {self.tolerance_points:g} points"
                if verdict
                else f"; candidate is off by {max(c['error_points'] for c in wrong):.1f} points on "
                + ", ".join(sorted({ATTRIBUTE_LABELS[c["attribute"]] for c in wrong}))
            )
        return Evidence(
            tool=self.name,
            ok=True,
            verdict=verdict,
            summary=summary,
            data={
                "query": occupation,
                "occupation": row.title,
                "match_score": match.score,
                "year": self.table.year,
                "total_employed_thousands": row.total_employed,
                "shares": shares,
                "claims": checked,
                "tolerance_points": self.tolerance_points,
                "source": str(self.table.source),
            },
        ).model_dump()
