"""A run's life in the database: prepared (stored with its prompts, its lease taken, one episode per selected
prompt), kept (lease renewed, progress and metrics stored), stopped on request or fault, and finished.

What both ways of playing (`local`, `workers`) build on; nothing here touches Ray.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from configs.loading import config_hash
from configs.schema import SynthesisConfig
from configs.secrets import masked
from pipelines.episode import Book, PlayedRound, PromptBook, PromptRef
from pipelines.game_setup import model_ids, new_prompt_book
from pipelines.prompt_sources import load_prompts
from pipelines.sampling import PassCounts
from storage import leases
from storage import records as rows
from storage.db import session_scope
from storage.folders import check_slug
from storage.leases import Lease, LeaseLostError
from storage.migrate import open_database
from storage.records import PromptRecord
from storage.retries import StorageUnavailableError, with_retries
from storage.vocabulary import AcceptedBy, EpisodeStatus, RunStatus

LEASE_THREAD_JOIN_S = 60.0  # how long the end of a run waits for the lease renewal thread to stop
STORE_PROGRESS_S = 10.0  # how often a playing run stores its metrics and prompt versions


class RunMetrics(BaseModel):
    """What `prefsmith runs show` prints under metrics, updated while the run goes."""

    episodes_total: int = 0
    episodes_done: int = 0
    accepted: int = 0
    verified: int = 0  # accepted pairs the tools verified (chosen passes, rejected fails)
    failed: int = 0
    mastered: int = 0  # retired prompts (game.retire_after), counted apart from gave_up
    out_of_reach: int = 0
    rounds: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    # Prompts of the sources not played now: finished before this invocation started (by this run, or — for a
    # refresh — by any run with the same config hash), and pending ones that --limit left for a later run.
    already_played: int = 0
    not_selected: int = 0
    # The Ray nodes this invocation played on: "engine:<model key>" (one per replica) and "episodes" (the
    # driver's node when episodes ran in the driver, else one per episode worker).
    nodes: dict[str, list[str]] = {}
    episode_workers: int = 0  # Ray actors that played this invocation's episodes (0: threads of the driver)
    episode_worker_restarts: int = 0  # episode workers that died or hung and were replaced

    def count_episode(self, status: EpisodeStatus) -> None:
        self.episodes_done += 1
        self.accepted += status == EpisodeStatus.ACCEPTED
        self.failed += status == EpisodeStatus.FAILED
        self.mastered += status == EpisodeStatus.MASTERED
        self.out_of_reach += status == EpisodeStatus.OUT_OF_REACH

    def count_round(self, record: PlayedRound) -> None:
        self.rounds += 1
        self.verified += record.accepted_by == AcceptedBy.VERIFIED
        self.completion_tokens += sum(c.completion_tokens or 0 for c in record.candidates)

    @property
    def accept_rate(self) -> float:
        return self.accepted / self.episodes_done if self.episodes_done else 0.0

    @property
    def pairs_per_min(self) -> float:
        return 60 * self.accepted / self.seconds if self.seconds else 0.0

    @property
    def verified_per_1k_tokens(self) -> float:
        """Yield: verified pairs per 1,000 target completion tokens."""
        return 1000 * self.verified / self.completion_tokens if self.completion_tokens else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0

    def stored(self) -> dict[str, Any]:
        return self.model_dump() | {
            "accept_rate": round(self.accept_rate, 4),
            "pairs_per_min": round(self.pairs_per_min, 3),
            "verified_per_1k_tokens": round(self.verified_per_1k_tokens, 3),
            "target_tokens_per_s": round(self.tokens_per_s, 2),
        }


@dataclass
class SynthesisReport:
    run_id: str
    config_hash: str
    metrics: RunMetrics
    interrupted: str | None = None  # why the run stopped early: a signal's name or the fault that stopped it
    status_not_stored: str | None = None  # why the final status could not be stored, if it could not
    prompts_total: int = 0
    engine_restarts: dict[str, int] = field(default_factory=dict)
    engine_usage: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> str:
        m = self.metrics
        head = (
            f"run {self.run_id}: " if not self.interrupted else f"run {self.run_id} interrupted ({self.interrupted}): "
        )
        left = f"{m.not_selected} not selected (--limit); " if m.not_selected else ""
        workers = f" on {m.episode_workers} episode worker(s)" if m.episode_workers else ""
        if m.episode_worker_restarts:
            workers += f" ({m.episode_worker_restarts} replaced)"
        unstored = (
            f"; its status could not be stored ({self.status_not_stored}): it shows as running until its lease expires"
            if self.status_not_stored
            else ""
        )
        return (
            f"{head}{m.episodes_done}/{m.episodes_total} episodes played this time, {m.accepted} accepted "
            f"({m.accept_rate:.0%}), {m.failed} failed, {m.mastered} mastered, {m.out_of_reach} out of reach, "
            f"{m.rounds} rounds; {m.already_played} already played in earlier runs; {left}{m.pairs_per_min:.2f} "
            f"pairs/min, {m.verified_per_1k_tokens:.2f} verified pairs per 1,000 target tokens, "
            f"{m.tokens_per_s:.1f} target tokens/s over "
            f"{m.seconds:.0f} s{workers}{unstored}"
        )


def default_run_id(config: SynthesisConfig) -> str:
    """The run a config resumes by default: one per config hash."""
    return f"run-{config_hash(config)[:12]}"


class StopRequest:
    """Why the run stops early, if it does. SIGINT/SIGTERM: the first starts no new episode and stops each
    in-flight one after the round it is playing (stored); the second abandons in-flight rounds at once (they
    are played again on rerun). A fault the run cannot play through (the database stays down, the lease was
    taken over, an engine keeps dying) abandons at once too. What was stored stays stored."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.abandon = threading.Event()
        self._previous: dict[int, Any] = {}
        self._lock = threading.Lock()

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def stop_now(self, reason: str) -> None:
        """Stop for `reason` without finishing in-flight rounds (from any thread)."""
        with self._lock:
            first = not self.abandon.is_set()
            self.reason = self.reason or reason
            self.abandon.set()
        if first:
            print(f"prefsmith: stopping: {reason}", file=sys.stderr, flush=True)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.reason is None:
            self.reason = signal.Signals(signum).name
            print(
                f"\nprefsmith: {self.reason}: stopping each in-flight episode after its current round (again to "
                "stop at once)",
                file=sys.stderr,
                flush=True,
            )
        elif not self.abandon.is_set():
            self.abandon.set()
            print(
                f"\nprefsmith: {signal.Signals(signum).name} again: abandoning in-flight rounds (stored rounds stay "
                "stored; a rerun plays the rest)",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Abandoned(Exception):
    """Raised inside an episode thread to leave it unfinished (a rerun continues it)."""


def restore_book(engine: Engine, run_id: str) -> PromptBook:
    """The run's prompt book as it was stored: every version, and the current one of each role."""
    with session_scope(engine) as session:
        stored = rows.load_prompt_versions(session, run_id)
        current = rows.current_prompt_versions(session, run_id)
    if not stored:
        return new_prompt_book()
    refs = [PromptRef(v.role, v.version, v.text, v.parent_version, v.critique) for v in stored]  # type: ignore[arg-type]
    return PromptBook.restore(refs, current)


@dataclass
class PreparedRun:
    """A run as `prepare_run` leaves it: stored with its prompts and one episode per selected prompt, its
    lease held by this process, and the pending episodes to play now."""

    engine: Engine
    prompts: dict[str, PromptRecord]
    pending: list[PendingEpisode]
    report: SynthesisReport
    earlier_metrics: dict[str, Any]  # what the run's earlier invocations stored; this one's are merged in
    lease: Lease
    retry_s: float
    started: float = field(default_factory=time.perf_counter)

    @property
    def run_id(self) -> str:
        return self.report.run_id

    @property
    def metrics(self) -> RunMetrics:
        return self.report.metrics

    def store(self, what: str, action: Callable[[], Any]) -> Any:
        """`action()` (a database write), retried while the database fails for a passing reason."""
        return with_retries(action, what, budget_s=self.retry_s)


@dataclass(frozen=True)
class PendingEpisode:
    """An episode to play: its prompt, the rounds it already played, and the prompt versions (by role) its
    next round plays with when it is resumed mid-way (None: the run's current ones)."""

    prompt_id: str
    rounds_played: int = 0
    resume_versions: dict[str, int] | None = None
    prior: PassCounts = PassCounts()  # its prompt's verdicts by this target model in earlier runs
    own: PassCounts = PassCounts()  # the verdicts of the rounds it played


def pending_episodes(session: Session, run_id: str) -> list[PendingEpisode]:
    """Run `run_id`'s episodes still to finish, each with the rounds it played, the prompt versions its
    next round resumes with (what a rerun plays, and what a replaced episode worker's episodes play) and the
    verdict counts its stepped sampling continues from."""
    resume, counts = rows.resume_prompt_versions(session, run_id), rows.episode_verdicts(session, run_id)
    return [
        PendingEpisode(pid, played, resume.get(pid), *_verdicts(*counts.get(pid, (0, 0, 0, 0))))
        for pid, played in rows.pending_episodes(session, run_id)
    ]


def _verdicts(prior_samples: int, prior_passes: int, samples: int, passes: int) -> tuple[PassCounts, PassCounts]:
    return PassCounts(prior_passes, prior_samples - prior_passes), PassCounts(passes, samples - passes)


def prepare_run(
    config: SynthesisConfig,
    run_id: str,
    db_url: str | None,
    *,
    limit: int | None,
    only_unplayed: bool,
    skip_retired_by: Sequence[str] = (),
) -> PreparedRun:
    """Store the run and its prompts, take the run's lease (RunLeaseHeldError if another synthesizer plays
    it), give the run one episode per selected prompt and mark it running.

    The run's prompt set is fixed by its episodes: `limit` gives the run episodes for at most that many
    prompts of its sources in total (the first ones, in source order), so rerunning the same command never
    picks new prompts; a larger `limit` or none adds more. `only_unplayed` leaves out prompts that any run
    with the same config hash finished, `skip_retired_by` those an episode of one of these target models
    retired (mastered, out of reach)."""
    check_slug(run_id, "--run-name")
    digest = config_hash(config)
    prompts = {p.id: p for p in load_prompts(config.prompts)}  # bad prompt files fail before the database is touched
    engine = open_database(db_url or config.storage.url, migrate=True)
    with session_scope(engine) as session:
        run = rows.ensure_run(session, run_id, digest, masked(config.model_dump(mode="json")))
        earlier_metrics = dict(run.metrics or {})
        rows.add_prompts(session, list(prompts.values()))
    lease = leases.acquire(engine, run_id, config.storage.lease_ttl_s)
    if lease.took_over_from is not None:
        print(
            f"prefsmith: run {run_id!r}: taking over from {leases.shown(lease.took_over_from)}, which stopped "
            "without finishing",
            file=sys.stderr,
            flush=True,
        )
    try:
        with session_scope(engine) as session:
            leases.renew(session, lease)
            skip = rows.played_prompt_ids(session, digest) if only_unplayed else set()
            skip |= rows.retired_prompt_ids(session, skip_retired_by)
            existing = rows.run_prompt_ids(session, run_id)
            unplayed = [pid for pid in prompts if pid not in existing and pid not in skip]
            room = len(unplayed) if limit is None else max(0, limit - sum(pid in existing for pid in prompts))
            rows.ensure_episodes(
                session,
                run_id,
                unplayed[:room],
                model_ids(config)["target"],
                with_prior=config.game.prior_from_history,
            )
            pending = [item for item in pending_episodes(session, run_id) if item.prompt_id in prompts]
            rows.update_run(session, run_id, status=RunStatus.RUNNING)
    except BaseException:
        leases.release(engine, lease)
        raise
    not_selected = len(unplayed) - room
    metrics = RunMetrics(
        episodes_total=len(pending),
        already_played=len(prompts) - len(pending) - not_selected,
        not_selected=not_selected,
    )
    report = SynthesisReport(run_id, digest, metrics, prompts_total=len(prompts))
    return PreparedRun(engine, prompts, pending, report, earlier_metrics, lease, config.storage.retry_s)


def store_progress(run: PreparedRun, book: Book, status: RunStatus | None = None) -> None:
    """Store the run's metrics so far and its current prompt versions (and `status`, when given)."""
    metrics = run.metrics
    metrics.seconds = time.perf_counter() - run.started
    target, judge = book.current()

    def write() -> None:
        with session_scope(run.engine) as session:
            leases.renew(session, run.lease)
            rows.update_run(
                session,
                run.run_id,
                status=status,
                metrics=run.earlier_metrics | metrics.stored(),
                current_prompt_versions={"target": target.version, "judge": judge.version},
            )

    run.store(f"storing the progress of run {run.run_id}", write)


class LeaseKeeper:
    """Renews the run's lease every third of its lifetime while the run plays; a lease taken over or a
    database that stays down stops the run."""

    def __init__(self, run: PreparedRun, stop: StopRequest) -> None:
        self.run, self.stop = run, stop
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prefsmith-lease", daemon=True)

    def _renew(self) -> None:
        with session_scope(self.run.engine) as session:
            leases.renew(session, self.run.lease)

    def _loop(self) -> None:
        period = self.run.lease.ttl_s / 3
        while not self._done.wait(period):
            try:
                self.run.store(f"renewing the lease of run {self.run.run_id}", self._renew)
            except (StorageUnavailableError, LeaseLostError) as exc:
                self.stop.stop_now(str(exc))
                return

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=LEASE_THREAD_JOIN_S)


def finish(run: PreparedRun, book: Book | None, interrupted: str | None) -> None:
    """Store the run's final status, metrics and prompt versions (`book`, once episodes played) and give its
    lease up. A database that stays down leaves the run `running` until its lease expires; the report says
    so, and a rerun resumes it either way."""
    status = RunStatus.INTERRUPTED if interrupted else RunStatus.COMPLETED
    try:
        if book is not None:
            store_progress(run, book, status)
        else:
            run.store(f"closing run {run.run_id}", lambda: _set_status(run, status))
        run.store(f"releasing the lease of run {run.run_id}", lambda: leases.release(run.engine, run.lease))
    except (StorageUnavailableError, LeaseLostError) as exc:
        run.report.interrupted = run.report.interrupted or str(exc)
        run.report.status_not_stored = str(exc)
    finally:
        run.engine.dispose()


def _set_status(run: PreparedRun, status: RunStatus) -> None:
    with session_scope(run.engine) as session:
        leases.renew(session, run.lease)
        rows.update_run(session, run.run_id, status=status)
