"""One Anyprefer episode as a pure function of its players: sample, investigate, rank, grade, accept or
rewrite the prompts, for at most R rounds; returns a record of every round.

No Ray, no SQL, no model here: the players are anything with the methods below (a test scripts them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from agents.game import (
    Candidate,
    EpisodePrompt,
    Graded,
    PlayerFailure,
    Ranking,
    ToolCall,
    derived_seed,
    verdict_of,
)
from agents.verdicts import PromptRewrite, RewardVerdict
from pipelines.sampling import (
    UNIFORM,
    PassCounts,
    Prior,
    VerdictPool,
    hopeless,
    next_step,
    retired,
    round_worth,
    value_step,
)
from storage.vocabulary import AcceptedBy, EpisodeStatus, RoundOutcome


class TargetPlayer(Protocol):
    model_id: str

    def sample(
        self, prompt: EpisodePrompt, system_prompt: str, n: int, seed: int
    ) -> list[Candidate] | PlayerFailure: ...


class JudgePlayer(Protocol):
    model_id: str

    def choose_tools(self, prompt: EpisodePrompt) -> list[str]: ...

    def investigate(
        self, prompt: EpisodePrompt, candidates: list[Candidate], tool_names: list[str]
    ) -> list[ToolCall]: ...

    def rank(
        self, prompt: EpisodePrompt, candidates: list[Candidate], calls: list[ToolCall], system_prompt: str
    ) -> Ranking | PlayerFailure: ...


class RewardPlayer(Protocol):
    model_id: str

    def grade(
        self,
        prompt: EpisodePrompt,
        chosen: Candidate,
        rejected: Candidate,
        ranking: Ranking,
        chosen_index: int,
        rejected_index: int,
        calls: list[ToolCall],
    ) -> Graded[RewardVerdict] | PlayerFailure: ...


class OptimizerPlayer(Protocol):
    model_id: str

    def rewrite(
        self,
        prompt: EpisodePrompt,
        candidates: list[Candidate],
        ranking: Ranking,
        chosen_index: int,
        rejected_index: int,
        reward: RewardVerdict,
        threshold: int,
        target_prompt: str,
        judge_prompt: str,
    ) -> Graded[PromptRewrite] | PlayerFailure: ...


@dataclass(frozen=True)
class Players:
    target: TargetPlayer
    judge: JudgePlayer
    reward: RewardPlayer
    optimizer: OptimizerPlayer


@dataclass(frozen=True)
class GameSettings:
    candidates: int = 5
    max_rounds: int = 3
    accept_threshold: int = 8
    seed: int = 0
    verdicts_decide: bool = False  # a verified pair is accepted without the reward model
    max_candidates: int | None = None  # a round's budget in steps (pipelines.sampling); None = candidates
    step_candidates: int | None = None  # candidates per further step; None = candidates
    step_threshold: float = 0.3
    retire_after: int | None = None  # N samples of one verdict retire the prompt (None: never)
    pooled_prior: bool = False  # each prompt's prior pooled from the run's other prompts (else Beta(1, 1))
    prior_strength: float | None = 2.0  # the pooled prior's weight, in samples (None: fitted to the pool)
    round_threshold: float | None = None  # another round only above this chance of the missing side (None: always)
    step_rule: Literal["chance", "value"] = "chance"  # what decides steps and rounds (pipelines.sampling)

    @property
    def round_budget(self) -> int:
        return max(self.candidates, self.max_candidates or self.candidates)

    @property
    def step_size(self) -> int:
        return self.step_candidates or self.candidates


@dataclass(frozen=True)
class PromptRef:
    """A version of a player's system prompt within a run."""

    role: Literal["target", "judge"]
    version: int
    text: str
    parent: int | None = None
    critique: str | None = None


class Book(Protocol):
    """What an episode asks of the run's prompt versions: a `PromptBook`, or a view of one held by an actor
    when episodes play in several processes."""

    def current(self) -> tuple[PromptRef, PromptRef]: ...

    def get(self, role: str, version: int) -> PromptRef: ...

    def propose(self, parent: PromptRef, text: str, critique: str) -> PromptRef: ...

    def promote(self, ref: PromptRef) -> bool: ...


class PromptBook:
    """The run's prompt versions, shared by its concurrent episodes.

    A rewrite gets a new version at once (so records can name it) but becomes the run's current prompt only
    when a pair made with it is accepted, and only if the version it was derived from is still current:
    two episodes promoting rival rewrites of the same parent cannot overwrite each other (first wins).
    """

    def __init__(self, target: str, judge: str) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, list[PromptRef]] = {
            "target": [PromptRef("target", 0, target)],
            "judge": [PromptRef("judge", 0, judge)],
        }
        self._current = {"target": 0, "judge": 0}
        self._proposed: dict[tuple[str, int | None, str, str | None], PromptRef] = {}  # (role, parent, text, critique)

    @classmethod
    def restore(cls, versions: list[PromptRef], current: dict[str, int]) -> PromptBook:
        """A book resumed from stored versions (a rerun of a run continues with the prompts it had learned)."""
        book = cls("", "")
        for role in ("target", "judge"):
            mine = sorted((v for v in versions if v.role == role), key=lambda v: v.version)
            if mine:
                book._versions[role] = mine
                book._current[role] = current.get(role, mine[-1].version)
        book._proposed = {(v.role, v.parent, v.text, v.critique): v for v in versions if v.parent is not None}
        return book

    def current(self) -> tuple[PromptRef, PromptRef]:
        with self._lock:
            return self._ref("target", self._current["target"]), self._ref("judge", self._current["judge"])

    def versions(self) -> list[PromptRef]:
        with self._lock:
            return [v for role in ("target", "judge") for v in self._versions[role]]

    def snapshot(self) -> tuple[list[PromptRef], dict[str, int]]:
        """Every version and the current one of each role: what `restore` takes."""
        with self._lock:
            versions = [v for role in ("target", "judge") for v in self._versions[role]]
            return versions, dict(self._current)

    def _ref(self, role: str, version: int) -> PromptRef:
        return next(v for v in self._versions[role] if v.version == version)

    def get(self, role: str, version: int) -> PromptRef:
        """Version `version` of `role`'s prompt (a resumed episode continues with the versions it had)."""
        with self._lock:
            return self._ref(role, version)

    def propose(self, parent: PromptRef, text: str, critique: str) -> PromptRef:
        """A new version: `text` rewritten from `parent`. The same rewrite of the same parent proposed again
        (a round played again after its episode worker died unstored) is the version it was the first time."""
        key = (parent.role, parent.version, text, critique)
        with self._lock:
            if key in self._proposed:
                return self._proposed[key]
            versions = self._versions[parent.role]
            ref = PromptRef(parent.role, versions[-1].version + 1, text, parent.version, critique)
            versions.append(ref)
            self._proposed[key] = ref
            return ref

    def promote(self, ref: PromptRef) -> bool:
        """Make `ref` current if its parent still is; True if it is current afterwards."""
        with self._lock:
            if self._current[ref.role] == ref.version:
                return True
            if ref.parent is not None and self._current[ref.role] == ref.parent:
                self._current[ref.role] = ref.version
                return True
            return False


@dataclass
class PlayedRound:
    """One round as the game played it: what each player said and what the round decided."""

    index: int
    target_prompt: PromptRef
    judge_prompt: PromptRef
    seed: int
    outcome: RoundOutcome = RoundOutcome.FAILED
    candidates: list[Candidate] = field(default_factory=list)
    steps: int = 0  # sampling steps the candidates came in (pipelines.sampling)
    tools: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    ranking: Ranking | None = None
    chosen_index: int | None = None
    rejected_index: int | None = None
    reward: RewardVerdict | None = None
    reward_raw: str | None = None
    rewrite: PromptRewrite | None = None
    accepted_by: AcceptedBy | None = None  # why the round's pair was accepted
    # The optimizer's rewrites the next round plays with (versions proposed by this round), if any.
    next_prompts: tuple[PromptRef, PromptRef] | None = None
    failures: list[PlayerFailure] = field(default_factory=list)
    failure_reason: str | None = None

    @property
    def prompts_after(self) -> tuple[PromptRef, PromptRef]:
        """The target and judge prompts the episode's next round plays with."""
        return self.next_prompts or (self.target_prompt, self.judge_prompt)

    @property
    def verdicts(self) -> list[bool | None]:
        """Each candidate's tool verdict (None: no tool could check it)."""
        return [verdict_of(self.tool_calls, i) for i in range(len(self.candidates))]


@dataclass
class EpisodeRecord:
    prompt: EpisodePrompt
    settings: GameSettings
    rounds: list[PlayedRound] = field(default_factory=list)
    status: EpisodeStatus = EpisodeStatus.FAILED
    reason: str | None = None
    promoted: list[PromptRef] = field(default_factory=list)
    finished: bool = False
    # Tool verdicts of the prompt's candidates by this target model: from earlier runs (`prior`, fixed when the
    # run's episode was created) and from this episode's rounds (`own`, resumed rounds included).
    prior: PassCounts = field(default_factory=PassCounts)
    own: PassCounts = field(default_factory=PassCounts)
    # The run's verdicts on its other prompts, when the prior is pooled (`settings.pooled_prior`), and what this
    # episode added to it.
    pool: VerdictPool | None = None
    pooled: PassCounts = field(default_factory=PassCounts)

    @property
    def counts(self) -> PassCounts:
        return self.prior + self.own

    def beta_prior(self) -> Prior:
        """The prior of the prompt's pass rate: pooled from the run's other prompts, or Beta(1, 1)."""
        if not self.settings.pooled_prior or self.pool is None:
            return UNIFORM
        strength = self.settings.prior_strength
        if strength is None:  # fitted to how the run's prompts spread
            strength = self.pool.strength(fallback=2.0)
        return Prior.pooled(self.pool.counts() - self.pooled, strength)

    def share(self, verdicts: list[bool | None]) -> None:
        """Add verdicts just checked to the run's pool at once, so that the episodes in flight beside this one
        weigh them in their next step decision, not only after this round ends."""
        if self.pool is not None:
            seen = PassCounts().plus(verdicts)
            self.pool.add(seen, self.prompt.id)
            self.pooled = self.pooled + seen

    @property
    def accepted_round(self) -> PlayedRound | None:
        return next((r for r in self.rounds if r.outcome == RoundOutcome.ACCEPTED), None)


def _fail(record: PlayedRound, failure: PlayerFailure) -> PlayedRound:
    record.outcome = RoundOutcome.FAILED
    record.failures.append(failure)
    record.failure_reason = f"{failure.role}: {failure.reason}"
    return record


def sample_in_steps(
    prompt: EpisodePrompt, players: Players, settings: GameSettings, record: PlayedRound, episode: EpisodeRecord
) -> PlayerFailure | None:
    """Steps 1–2 of the game: sample `candidates`, run the tools on them, and while their verdicts do not mix
    and the prompt's posterior pass rate (the episode's counts before this round, under its prior as it stands
    at that moment) says the next step likely brings the missing side, sample and check another step, up to
    `max_candidates`. Each step's verdicts join the run's pool as soon as they are checked. Step k > 0 draws
    with a seed derived from the round's, so a round played again draws the same steps."""
    first = players.target.sample(prompt, record.target_prompt.text, settings.candidates, record.seed)
    if isinstance(first, PlayerFailure):
        return first
    record.candidates, record.steps = list(first), 1
    if len(first) < 2:
        return None
    record.tools = players.judge.choose_tools(prompt)
    record.tool_calls = players.judge.investigate(prompt, record.candidates, record.tools)
    episode.share(record.verdicts)
    while True:
        verdicts = record.verdicts
        room = settings.round_budget - len(record.candidates)
        counts = episode.counts.plus(verdicts)
        if settings.step_rule == "value":
            n = value_step(counts, verdicts, settings.candidates, settings.step_size, room, episode.beta_prior())
        else:
            n = next_step(counts, verdicts, settings.step_size, room, settings.step_threshold, episode.beta_prior())
        if n == 0:
            return None
        seed = derived_seed(record.seed, "step", record.steps)
        more = players.target.sample(prompt, record.target_prompt.text, n, seed)
        if isinstance(more, PlayerFailure):
            record.failures.append(more)  # the candidates so far still make the round
            return None
        offset = len(record.candidates)
        calls = players.judge.investigate(prompt, list(more), record.tools)
        record.tool_calls += [  # the input's own evidence is already there
            ToolCall(c.tool, c.candidate + offset, c.arguments, c.evidence, c.verifies)
            for c in calls
            if c.candidate is not None
        ]
        record.candidates += more
        record.steps += 1
        episode.share(record.verdicts[offset:])


def play_round(
    prompt: EpisodePrompt,
    players: Players,
    settings: GameSettings,
    record: PlayedRound,
    episode: EpisodeRecord,
) -> PlayedRound:
    """Steps 1–6 of the game for one round; fills `record` and returns it. `episode` holds the prompt's
    verdicts before this round and its pass-rate prior (what stepped sampling weighs)."""
    failure = sample_in_steps(prompt, players, settings, record, episode)
    if failure is not None:
        return _fail(record, failure)
    candidates = record.candidates
    if len(candidates) < 2:
        return _fail(record, PlayerFailure("target", f"{len(candidates)} candidate(s); a pair needs 2"))

    ranking = players.judge.rank(prompt, candidates, record.tool_calls, record.judge_prompt.text)
    if isinstance(ranking, PlayerFailure):
        return _fail(record, ranking)
    record.ranking = ranking

    best, worst = ranking.best_and_worst()
    if (
        best.final_score == worst.final_score
        or candidates[best.index].text.strip() == candidates[worst.index].text.strip()
    ):
        record.outcome = RoundOutcome.TIE
        record.failure_reason = f"best and worst candidates tie (score {best.final_score:g})"
        return record
    if best.verified is None and best.judge_score is None:
        # Nothing but a reward grade would stand behind the chosen answer: no tool checked it and the judge's
        # answer did not parse. A grade alone never accepts a pair, so the round spends no reward tokens.
        record.outcome = RoundOutcome.TIE
        record.failure_reason = (
            "the chosen answer has no tool verdict and no judge score; a reward grade alone accepts no pair"
        )
        return record
    record.chosen_index, record.rejected_index = best.index, worst.index
    if settings.verdicts_decide and best.verified is True and worst.verified is False:
        # Correct over wrong by the tools' own checks: no grade of the reward model can make it better data.
        record.outcome, record.accepted_by = RoundOutcome.ACCEPTED, AcceptedBy.VERIFIED
        return record

    graded = players.reward.grade(
        prompt, candidates[best.index], candidates[worst.index], ranking, best.index, worst.index, record.tool_calls
    )
    if isinstance(graded, PlayerFailure):
        return _fail(record, graded)
    record.reward, record.reward_raw = graded.value, graded.raw
    accepted = graded.value.score >= settings.accept_threshold
    record.outcome = RoundOutcome.ACCEPTED if accepted else RoundOutcome.REJECTED
    record.accepted_by = AcceptedBy.REWARD if accepted else None
    return record


RoundCallback = Callable[["EpisodeRecord", PlayedRound], None]


def play_episode(
    prompt: EpisodePrompt,
    players: Players,
    book: Book,
    settings: GameSettings,
    *,
    first_round: int = 0,
    prompts: tuple[PromptRef, PromptRef] | None = None,
    on_round: RoundCallback | None = None,
    prior: PassCounts | None = None,
    own: PassCounts | None = None,
    pool: VerdictPool | None = None,
) -> EpisodeRecord:
    """Play `prompt` until a pair is accepted or `settings.max_rounds` rounds are spent.

    A rejected pair sends the round's evidence, ranking and reward analysis to the optimizer, whose rewrites
    the next round plays with; ties and failed rounds simply retry with a new seed. When the accepted pair
    was made with rewritten prompts, they are promoted to the run's current prompts (see `PromptBook`).

    `first_round` continues an episode whose earlier rounds were played before (a resumed run), with the
    target and judge `prompts` its last played round left for the next (default: the run's current ones);
    `on_round` is called after every round with the episode as it stands — `episode.finished` tells whether that round
    ended it — so a caller can store each round as it finishes.

    `prior` are the prompt's verdicts by this target model in earlier runs, `own` those of the rounds this
    episode played before `first_round`: together they are the pass-rate estimate stepped sampling weighs and
    retiring (`settings.retire_after`) counts. `pool` gathers the verdicts of the run's episodes in this process:
    with `settings.pooled_prior` the prompt's prior is pooled from the others' (empirical Bayes), and with
    `settings.round_threshold` an episode whose verdicts all agree ends once another round is unlikely to bring
    the missing side.
    """
    episode = EpisodeRecord(
        prompt=prompt, settings=settings, prior=prior or PassCounts(), own=own or PassCounts(), pool=pool
    )
    target_prompt, judge_prompt = prompts or book.current()
    for index in range(first_round, settings.max_rounds):
        seed = derived_seed(settings.seed, prompt.id, index)
        record = PlayedRound(index, target_prompt, judge_prompt, seed)
        record = play_round(prompt, players, settings, record, episode)  # its verdicts joined the pool
        episode.rounds.append(record)
        episode.own = episode.own + PassCounts().plus(record.verdicts)
        early = None if index == settings.max_rounds - 1 else early_end(episode)
        last_round = index == settings.max_rounds - 1 or early is not None
        retire = None if record.outcome == RoundOutcome.ACCEPTED else retired(
            episode.counts, settings.retire_after, budget_spent=last_round
        )
        if record.outcome == RoundOutcome.ACCEPTED:
            episode.status, episode.finished = EpisodeStatus.ACCEPTED, True
            episode.promoted = [
                ref for ref in (target_prompt, judge_prompt) if ref.parent is not None and book.promote(ref)
            ]
        elif retire is not None:
            episode.status, episode.finished = EpisodeStatus(retire), True
            episode.reason = (
                f"retired: all {episode.counts.samples} samples of this target model "
                f"{'passed' if retire == EpisodeStatus.MASTERED else 'failed'} their tools' checks"
            )
        elif last_round:
            _close_without_pair(episode, early)
        elif record.outcome == RoundOutcome.REJECTED:
            assert record.ranking is not None and record.reward is not None
            assert record.chosen_index is not None and record.rejected_index is not None
            rewrite = players.optimizer.rewrite(
                prompt,
                record.candidates,
                record.ranking,
                record.chosen_index,
                record.rejected_index,
                record.reward,
                settings.accept_threshold,
                target_prompt.text,
                judge_prompt.text,
            )
            if isinstance(rewrite, PlayerFailure):
                record.failures.append(rewrite)  # keep the prompts; the round's pair is still recorded
            else:
                record.rewrite = rewrite.value
                target_prompt = book.propose(target_prompt, rewrite.value.target_prompt, rewrite.value.target_critique)
                judge_prompt = book.propose(judge_prompt, rewrite.value.judge_prompt, rewrite.value.judge_critique)
                record.next_prompts = (target_prompt, judge_prompt)
        if on_round is not None:
            on_round(episode, record)
        if episode.finished:
            return episode
    if not episode.finished:  # nothing left to play (first_round >= max_rounds)
        _close_without_pair(episode)
    return episode


def early_end(episode: EpisodeRecord) -> str | None:
    """Why the episode ends before its last round, when every verdict of it so far agrees and another round is
    not worth playing (`game.round_threshold`, or the value rule); None: play on."""
    settings, counts, prior = episode.settings, episode.counts, episode.beta_prior()
    if counts.samples == 0:
        return None
    if settings.step_rule == "value":
        worth = round_worth(counts, settings.candidates, settings.step_size, settings.round_budget, prior)
        if worth is None:
            return None
        return (
            f"another round's expected pairs, less its candidates at the yield a fresh prompt of this family gives, "
            f"came to {worth:.3f} (game.step_rule value)"
        )
    chance = hopeless(counts, settings.candidates, settings.round_threshold, prior)
    if chance is None:
        return None
    side = "passing" if counts.passes == 0 else "failing"
    return (
        f"a {side} candidate among the next round's {settings.candidates} had chance {chance:.2f} "
        f"(game.round_threshold {settings.round_threshold:g})"
    )


def _close_without_pair(episode: EpisodeRecord, early: str | None = None) -> None:
    """Close an episode that made no pair: failed when every round failed, else gave up — after its rounds, or
    early (`early` says why: another round was not worth playing)."""
    settings = episode.settings
    outcomes = [r.outcome for r in episode.rounds]
    episode.finished = True
    if outcomes and all(o == RoundOutcome.FAILED for o in outcomes):
        episode.status, episode.reason = EpisodeStatus.FAILED, episode.rounds[-1].failure_reason
        return
    best = max((r.reward.score for r in episode.rounds if r.reward is not None), default=None)
    episode.status = EpisodeStatus.GAVE_UP
    if early is not None:
        counts = episode.counts
        episode.reason = (
            f"stopped after {len(episode.rounds)} of {settings.max_rounds} rounds: all {counts.samples} samples "
            f"{'failed' if counts.passes == 0 else 'passed'} their tools' checks, and {early}"
        )
        return
    episode.reason = (
        f"no pair reached reward {settings.accept_threshold} in {settings.max_rounds} rounds "
        f"(best reward {best if best is not None else 'none'}; rounds: {', '.join(outcomes) or 'none'})"
    )
