"""Where a round's samples go: a prompt's pass rate under the tool verdicts as a Beta posterior, whether one more
step of candidates (or one more round) is likely to bring the side a verified pair still lacks (or, by the value
rule, would pay for its candidates), and when a prompt is retired. The prior is Beta(1, 1), or one pooled from the
verdicts of the run's other prompts (`VerdictPool`), its weight fixed or fitted to how far their pass rates spread.

Pure arithmetic on counts (docs/methods.md, "Sampling by expected yield"): no model, no SQL.
"""

from __future__ import annotations

import functools
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


# How dispersed a family's pass rates are across its prompts, in prior samples: the grid `game.prior_strength:
# auto` fits it on (a factor of about 1.4 apart, 0.5 to 128), and the prompts that must have verdicts first.
STRENGTHS = tuple(round(2 ** (k / 2), 3) for k in range(-2, 15))
FIT_AFTER_PROMPTS = 8


class VerdictPool:
    """The tool verdicts of the candidates one process has seen in a run, pooled over its prompts: the family's
    pass rate for this target model, which `game.pooled_prior` makes each prompt's prior from, and how far its
    prompts' pass rates spread (`strength`). Thread-safe: the episodes a process plays at once all add to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = PassCounts()
        self._by_prompt: dict[str, PassCounts] = {}
        self._fit: tuple[int, float] | None = None  # (samples it was fitted on, strength)

    def add(self, counts: PassCounts, prompt: str | None = None) -> None:
        with self._lock:
            self._counts = self._counts + counts
            if prompt is not None:
                self._by_prompt[prompt] = self._by_prompt.get(prompt, PassCounts()) + counts

    def counts(self) -> PassCounts:
        with self._lock:
            return self._counts

    def strength(self, fallback: float) -> float:
        """Empirical Bayes: the prior weight (in samples) under which the prompts' verdicts are likeliest, the
        prior's mean the pooled pass rate: the marginal likelihood of each prompt's counts under Beta(s·m,
        s·(1-m)), maximised over `STRENGTHS`. A small weight says pass rates spread (a prompt's own verdicts soon
        tell it apart), a large one that the prompts are alike. `fallback` until `FIT_AFTER_PROMPTS` prompts have
        verdicts of both kinds between them; refitted as the pool grows by a tenth."""
        with self._lock:
            total, prompts = self._counts, list(self._by_prompt.values())
            if self._fit is not None and total.samples < 1.1 * self._fit[0]:
                return self._fit[1]
        if len(prompts) < FIT_AFTER_PROMPTS or not (total.passes and total.fails):
            return fallback
        mean = total.passes / total.samples

        def likelihood(s: float) -> float:
            a, b = s * mean, s * (1 - mean)
            return sum(_log_beta(a + c.passes, b + c.fails) - _log_beta(a, b) for c in prompts)

        fitted = max(STRENGTHS, key=likelihood)
        with self._lock:
            self._fit = (total.samples, fitted)
        return fitted


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


# The value rule (`game.step_rule: value`): sample while the expected pairs of the best way to go on with a prompt
# pay for its candidates at the yield the family itself could give a fresh prompt. Costs are in candidates.


def _outcomes(a: float, b: float, n: int) -> list[float]:
    """P(j of `n` new samples pass) for j = 0..n, the pass rate drawn from Beta(a, b): the beta-binomial."""
    return [
        math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)
                 + _log_beta(a + j, b + n - j) - _log_beta(a, b))
        for j in range(n + 1)
    ]


class RoundValue:
    """The worth of a round's ways on, at `rate` pairs per candidate: expected pairs (1 once its verdicts mix) minus
    `rate` times the candidates spent, each step of 1 to `size` candidates (the first of a round: `first`), at most
    `budget` in the round, a step taken only where it pays. A state is the posterior Beta(a, b) over every verdict
    so far, the verdict the round's candidates share (None: none sampled yet) and how many it holds."""

    def __init__(self, rate: float, first: int, size: int, budget: int) -> None:
        self.rate, self.first, self.size, self.budget = rate, first, size, budget
        self._memo: dict[tuple[float, float, bool | None, int], float] = {}

    def step(self, a: float, b: float, side: bool | None, held: int, n: int) -> float:
        """The worth of sampling `n` now and going on as well as one can after."""
        worth = -self.rate * n
        for j, p in enumerate(_outcomes(a, b, n)):
            mixed = 0 < j < n or (side is True and j < n) or (side is False and j > 0)
            after = side if side is not None else j == n
            worth += p * (1.0 if mixed else self.state(a + j, b + n - j, after, held + n))
        return worth

    def sizes(self, side: bool | None, held: int) -> range:
        room = self.budget - held
        if side is None:
            return range(self.first, self.first + 1) if self.first <= room else range(0)
        return range(1, min(self.size, room) + 1)

    def state(self, a: float, b: float, side: bool | None, held: int) -> float:
        """The state's worth: 0 (stop) or that of its best step."""
        key = (a, b, side, held)
        if key not in self._memo:
            self._memo[key] = max([0.0, *(self.step(a, b, side, held, n) for n in self.sizes(side, held))])
        return self._memo[key]

    def best(self, a: float, b: float, side: bool | None, held: int) -> int:
        """The step to take (0: stop); of steps worth the same, the larger (fewer calls to the engine)."""
        worth, n = max(((self.step(a, b, side, held, n), n) for n in self.sizes(side, held)), default=(0.0, 0))
        return n if round(worth, 12) > 0 else 0


def family_rate(prior: Prior, first: int, size: int, budget: int) -> float:
    """λ*: the most verified pairs per candidate a round on a fresh prompt of the family (its pass rate drawn from
    `prior`) can give, by the best way to go on. A prompt is worth more candidates only while they pay at this
    rate, since a fresh prompt would (Dinkelbach: the rate at which the best policy's worth is 0, by bisection)."""
    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        if RoundValue(mid, first, size, budget).state(prior.passes, prior.fails, None, 0) > 0:
            low = mid
        else:
            high = mid
    return low


@functools.lru_cache(maxsize=4096)
def _cached_rate(passes: float, fails: float, first: int, size: int, budget: int) -> float:
    return family_rate(Prior(passes, fails), first, size, budget)


def _rate(prior: Prior, first: int, size: int, budget: int) -> float:
    """`family_rate`, the prior rounded to 1/1000 of a sample: a run's decisions ask for a few priors many times."""
    return _cached_rate(round(prior.passes, 3), round(prior.fails, 3), first, size, budget)


def value_step(counts: PassCounts, verdicts: list[bool | None], first: int, size: int, room: int,
               prior: Prior = UNIFORM) -> int:
    """The value rule's next step in a round (0: stop): only while every candidate so far has a verdict and they
    agree, of the size whose expected pairs best pay for it at the family's rate. `counts` include this round's
    verdicts; `room` is what the round's budget has left."""
    if room <= 0 or not verdicts or any(v is None for v in verdicts) or len(set(verdicts)) > 1:
        return 0
    budget = len(verdicts) + room
    value = RoundValue(_rate(prior, first, size, budget), first, size, budget)
    return value.best(prior.passes + counts.passes, prior.fails + counts.fails, bool(verdicts[0]), len(verdicts))


def round_worth(counts: PassCounts, first: int, size: int, budget: int, prior: Prior = UNIFORM) -> float | None:
    """When every verdict of the prompt so far (`counts`) agrees: what another round is worth at the family's rate
    (its expected pairs minus the rate times its candidates, going on as well as one can), if that is not above 0,
    so the episode ends; else None."""
    if counts.samples == 0 or (counts.passes and counts.fails):
        return None
    value = RoundValue(_rate(prior, first, size, budget), first, size, budget)
    worth = value.step(prior.passes + counts.passes, prior.fails + counts.fails, None, 0, first)
    return None if round(worth, 12) > 0 else worth
