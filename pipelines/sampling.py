"""Where a round's samples go: a prompt's pass rate under the tool verdicts as a Beta posterior, whether one more
step of candidates (or one more round) is likely to bring the side a verified pair still lacks, and when a prompt
is retired. The prior is Beta(1, 1), or one pooled from the verdicts of the run's other prompts (`VerdictPool`).

Pure arithmetic on counts (docs/methods.md, "Sampling by expected yield"): no model, no SQL.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

# The prior of a prompt's pass rate before any verdict is seen, unless a pooled one is asked for: Beta(1, 1).
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

    def __sub__(self, other: PassCounts) -> PassCounts:
        return PassCounts(max(0, self.passes - other.passes), max(0, self.fails - other.fails))

    def plus(self, verdicts: Iterable[bool | None]) -> PassCounts:
        """These counts and the given verdicts; a candidate no tool could check (None) counts for neither."""
        seen = [v for v in verdicts if v is not None]
        return PassCounts(self.passes + sum(seen), self.fails + sum(not v for v in seen))

    @property
    def pass_rate(self) -> float:
        """The posterior mean of the pass rate."""
        return (PRIOR_PASSES + self.passes) / (PRIOR_PASSES + PRIOR_FAILS + self.samples)


@dataclass(frozen=True)
class Prior:
    """A Beta(passes, fails) prior of a prompt's pass rate, in pseudo-samples."""

    passes: float = PRIOR_PASSES
    fails: float = PRIOR_FAILS

    @classmethod
    def pooled(cls, pool: PassCounts, strength: float) -> Prior:
        """Empirical Bayes: a prior whose mean is the pass rate the pooled verdicts of other prompts of the family
        show (Laplace-smoothed: (passes + 1) / (samples + 2)) and whose weight is `strength` samples. No pooled
        verdicts yet and strength 2: Beta(1, 1)."""
        mean = (pool.passes + 1) / (pool.samples + 2)
        return cls(strength * mean, strength * (1 - mean))


UNIFORM = Prior()


class VerdictPool:
    """The tool verdicts of the candidates one process has seen in a run, pooled over its prompts: the family's
    pass rate for this target model, which `game.pooled_prior` makes each prompt's prior from. Thread-safe: the
    episodes a process plays at once all add to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = PassCounts()

    def add(self, counts: PassCounts) -> None:
        with self._lock:
            self._counts = self._counts + counts

    def counts(self) -> PassCounts:
        with self._lock:
            return self._counts


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def chance_of_side(counts: PassCounts, want_pass: bool, n: int, prior: Prior = UNIFORM) -> float:
    """P(at least one of `n` new samples passes (`want_pass`) or fails), the pass rate p drawn from the Beta
    posterior of `counts` under `prior`: 1 - E[(1-p)^n] = 1 - B(a, b+n) / B(a, b) for a pass, symmetrically for
    a fail."""
    if n <= 0:
        return 0.0
    a, b = prior.passes + counts.passes, prior.fails + counts.fails
    none = _log_beta(a, b + n) - _log_beta(a, b) if want_pass else _log_beta(a + n, b) - _log_beta(a, b)
    return 1.0 - math.exp(none)


def next_step(
    counts: PassCounts,
    verdicts: list[bool | None],
    size: int,
    room: int,
    threshold: float,
    prior: Prior = UNIFORM,
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
    return n if round(chance_of_side(counts, want_pass=not verdicts[0], n=n, prior=prior), 9) > threshold else 0


def hopeless(counts: PassCounts, n: int, threshold: float | None, prior: Prior = UNIFORM) -> float | None:
    """When every verdict of the prompt so far (`counts`) agrees: the chance that the next round's `n` candidates
    bring the missing side, if it is at most `threshold` (the episode is not worth another round); else None."""
    if threshold is None or counts.samples == 0 or (counts.passes and counts.fails):
        return None
    chance = round(chance_of_side(counts, want_pass=counts.passes == 0, n=n, prior=prior), 9)
    return chance if chance <= threshold else None


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
