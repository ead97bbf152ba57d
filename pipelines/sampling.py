"""Where a round's samples go: a prompt's pass rate under the tool verdicts as a Beta posterior, whether one more
step of candidates is likely to bring the side a verified pair still lacks, and when a prompt is retired.

Pure arithmetic on counts (docs/methods.md, "Sampling by expected yield"): no model, no SQL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# The prior of every prompt's pass rate: Beta(1, 1), uniform, before any verdict is seen.
PRIOR_PASSES = 1.0
PRIOR_FAILS = 1.0


@dataclass(frozen=True)
class PassCounts:
    """Tool verdicts of one prompt's candidates by one target model: passed and failed samples."""

    passes: int = 0
    fails: int = 0

    @property
    def samples(self) -> int:
        return self.passes + self.fails

    def __add__(self, other: PassCounts) -> PassCounts:
        return PassCounts(self.passes + other.passes, self.fails + other.fails)

    def plus(self, verdicts: Iterable[bool | None]) -> PassCounts:
        """These counts and the given verdicts; a candidate no tool could check (None) counts for neither."""
        seen = [v for v in verdicts if v is not None]
        return PassCounts(self.passes + sum(seen), self.fails + sum(not v for v in seen))

    @property
    def pass_rate(self) -> float:
        """The posterior mean of the pass rate."""
        return (PRIOR_PASSES + self.passes) / (PRIOR_PASSES + PRIOR_FAILS + self.samples)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def chance_of_side(counts: PassCounts, want_pass: bool, n: int) -> float:
    """P(at least one of `n` new samples passes (`want_pass`) or fails), the pass rate p drawn from the Beta
    posterior of `counts`: 1 - E[(1-p)^n] = 1 - B(a, b+n) / B(a, b) for a pass, symmetrically for a fail."""
    if n <= 0:
        return 0.0
    a, b = PRIOR_PASSES + counts.passes, PRIOR_FAILS + counts.fails
    none = _log_beta(a, b + n) - _log_beta(a, b) if want_pass else _log_beta(a + n, b) - _log_beta(a, b)
    return 1.0 - math.exp(none)


def next_step(
    counts: PassCounts, verdicts: list[bool | None], size: int, room: int, threshold: float
) -> int:
    """How many candidates the round's next step samples (0: stop).

    Another step only while every candidate so far has a verdict and they all agree (a pair lacks one side),
    there is room under the round's budget, and the posterior of `counts` (earlier samples and this round's)
    puts the chance of the missing side within the step above `threshold`.
    """
    n = min(size, room)
    if n <= 0 or not verdicts or any(v is None for v in verdicts) or len(set(verdicts)) > 1:
        return 0
    # rounded: the exact fractions the posterior gives (3/10 after 6 agreeing verdicts) must not pass a threshold
    # they equal by a rounding error of lgamma
    return n if round(chance_of_side(counts, want_pass=not verdicts[0], n=n), 9) > threshold else 0


def retired(counts: PassCounts, after: int | None, budget_spent: bool) -> str | None:
    """'mastered' once `after` samples all passed; 'out_of_reach' when they all failed and the episode's rounds
    are spent; None otherwise (or when retiring is off)."""
    if after is None or counts.samples < after:
        return None
    if counts.fails == 0:
        return "mastered"
    if counts.passes == 0 and budget_spent:
        return "out_of_reach"
    return None
