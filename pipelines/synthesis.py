"""Synthesis as a service on Ray: engine actors shared by every role that names their model, tools on CPU
workers, K episodes in flight, every round stored as it finishes, resumable at any point.

`synthesize` is what `prefsmith synthesize` (and `python -m pipelines.cli synthesize` under `ray job submit`)
runs; it joins a cluster when given an address and starts a local Ray otherwise.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import ray
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from agents.backends import (
    Backend,
    BackendFactory,
    BackendUnavailableError,
    ChatRequest,
    ChatResult,
    create_backend,
)
from agents.game import EpisodePrompt
from configs.loading import config_hash
from configs.schema import ModelConfig, SynthesisConfig, omp_threads, usable_cpus
from configs.secrets import masked
from pipelines.episode import (
    Book,
    EpisodeRecord,
    GameSettings,
    PlayedRound,
    Players,
    PromptBook,
    PromptRef,
    RoundCallback,
    play_episode,
)
from pipelines.game_setup import build_players, game_settings, model_ids, new_prompt_book, used_model_keys
from pipelines.prompt_sources import load_prompts
from pipelines.recording import GroupCommit, RoundToStore, store_rounds
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
from tools.base import Evidence, JudgeTool
from tools.registry import build_tools

ENGINE_CALL_TIMEOUT_S = 900.0
RAY_WAIT_S = 60.0  # bound on Ray calls that should answer at once (usage, kill)
PLACEMENT_WAIT_S = 600.0  # bound on waiting for GPUs of a placement group
POLL_S = 0.5  # how often a long Ray wait looks whether the run is being abandoned
PASSED_ENV = (
    "PREFSMITH_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "VLLM_CPU_KVCACHE_SPACE",
    "VLLM_CPU_OMP_THREADS_BIND",
    "OMP_NUM_THREADS",
)


class EngineActor:
    """One model engine in a Ray actor. Threaded (many calls at once), so the backend inside batches the
    requests of concurrent callers into shared engine calls."""

    def __init__(self, model_config: ModelConfig, factory: BackendFactory = create_backend) -> None:
        import torch

        if model_config.threads is None:  # not Ray's OMP_NUM_THREADS: every CPU of this node
            model_config = model_config.model_copy(update={"threads": usable_cpus()})
        self.threads = model_config.torch_threads()
        torch.set_num_threads(self.threads)
        self.backend = factory(model_config)
        self.completion_tokens = 0
        self.busy_s = 0.0
        self.first_call: float | None = None
        self.last_return: float | None = None
        self._lock = threading.Lock()

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        started = time.perf_counter()
        results = self.backend.generate(requests)
        with self._lock:
            self.first_call = started if self.first_call is None else min(self.first_call, started)
            self.last_return = time.perf_counter()
            self.busy_s += self.last_return - started
            self.completion_tokens += sum(c.completion_tokens for r in results for c in r.completions)
        return results

    def usage(self) -> dict[str, Any]:
        with self._lock:
            window = 0.0 if self.first_call is None or self.last_return is None else self.last_return - self.first_call
            return {
                "completion_tokens": self.completion_tokens,
                "busy_s": self.busy_s,
                "wall_s": window,
                "engine_calls": self.backend.engine_calls,
                "threads": self.threads,
            }

    def engine_calls(self) -> int:
        return self.backend.engine_calls

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


class EngineGroup:
    """Owns the engine actor of one configured model: creates it with the resources the config asks for
    (a placement group for tensor parallelism), and replaces it when it dies or hangs — at most
    `max_restarts` times in any `window_s` seconds; past that, `on_unavailable` is told and the run stops.
    Everything else asks it for the current handle."""

    def __init__(
        self,
        key: str,
        model: ModelConfig,
        name: str,
        max_concurrency: int,
        factory: BackendFactory = create_backend,
        *,
        max_restarts: int = 3,
        window_s: float = 600.0,
        on_unavailable: Callable[[str], None] | None = None,
    ) -> None:
        self.key, self.model, self.max_concurrency, self.factory = key, model, max_concurrency, factory
        self.name = name[:120]
        self.max_restarts, self.window_s, self.on_unavailable = max_restarts, window_s, on_unavailable
        self.restarts = 0
        self._recent: deque[float] = deque()  # when the restarts inside the window happened
        self._lock = threading.Lock()
        self._placement_group: Any = None  # a PlacementGroup, made the first time a sharded engine starts
        self.handle = self._create()

    def _create(self) -> Any:
        options: dict[str, Any] = {
            "name": self.name,
            "namespace": "prefsmith",
            "max_concurrency": self.max_concurrency,
            "num_cpus": self.model.num_cpus,
            "num_gpus": self.model.num_gpus,
            "resources": dict(self.model.resources),
            "runtime_env": {"env_vars": {k: os.environ[k] for k in PASSED_ENV if k in os.environ}},
        }
        if self.model.tensor_parallel_size > 1 and self.model.num_gpus > 0:
            # vLLM's Ray executor places its tensor-parallel workers in the group the engine actor was
            # scheduled in: one GPU bundle per shard, the actor itself holding none.
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            if self._placement_group is None:
                bundles = [{"GPU": 1, "CPU": 1}] * self.model.tensor_parallel_size
                self._placement_group = placement_group(bundles, strategy="PACK")
                try:
                    ray.get(self._placement_group.ready(), timeout=PLACEMENT_WAIT_S)
                except ray.exceptions.GetTimeoutError:
                    raise BackendUnavailableError(
                        f"engine {self.key}: the cluster did not provide {len(bundles)} GPU bundles within "
                        f"{PLACEMENT_WAIT_S:.0f} s"
                    ) from None
            options |= {
                "num_gpus": 0,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    self._placement_group, placement_group_capture_child_tasks=True
                ),
            }
        # Ray sets OMP_NUM_THREADS in its workers to the CPUs they reserve; the engine's own default is the
        # synthesizer's $OMP_NUM_THREADS if set, else every CPU of its node (as vLLM's CPU build binds them all).
        model = self.model
        if model.threads is None:
            model = model.model_copy(update={"threads": omp_threads()})
        return ray.remote(EngineActor).options(**options).remote(model, self.factory)

    def remove_placement_group(self) -> None:
        if self._placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self._placement_group)
            self._placement_group = None

    def replace(self, dead: Any, reason: str) -> Any | None:
        """A fresh actor in place of `dead` (unless another caller already replaced it); None once the
        restarts inside the window are spent."""
        with self._lock:
            if self.handle is None or self.handle != dead:  # another caller replaced it (handles compare by actor)
                return self.handle
            now = time.monotonic()
            while self._recent and now - self._recent[0] > self.window_s:
                self._recent.popleft()
            if len(self._recent) >= self.max_restarts:
                self.handle = None
                if self.on_unavailable is not None:
                    self.on_unavailable(
                        f"engine {self.key} {reason}, after {len(self._recent)} restarts in {self.window_s:.0f} s"
                    )
                return None
            self._recent.append(now)
            self.restarts += 1
            print(
                f"prefsmith: engine {self.key} {reason}; restarting it ({len(self._recent)}/{self.max_restarts} "
                f"in {self.window_s:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
            try:
                ray.kill(dead, no_restart=True)
            except Exception:  # it may be gone already
                pass
            self.handle = self._create()
            return self.handle


class Engines(Protocol):
    """Where a model's engine actor is found: an `EngineGroup` on the driver, or an episode worker's view of
    one through the run's engine registry."""

    key: str

    @property
    def handle(self) -> Any: ...

    def replace(self, dead: Any, reason: str) -> Any | None: ...


class ActorBackend(Backend):
    """The backend protocol on the driver side of a model's engine actors (its replicas). Each caller's
    requests go straight to the least loaded replica as one actor call; the actor's own backend batches the
    calls that arrive together, so the driver never holds requests back while an engine call runs. A dead or
    hung actor is replaced and the call retried."""

    supports_json_schema = True

    def __init__(
        self,
        groups: Sequence[Engines],
        max_batch_size: int,
        call_timeout_s: float = ENGINE_CALL_TIMEOUT_S,
        abandon: threading.Event | None = None,
    ):
        super().__init__(max_batch_size)
        self.groups, self.call_timeout_s = groups, call_timeout_s
        self.abandon = abandon or threading.Event()
        self.load = [0] * len(groups)  # calls in flight per replica
        self._load_lock = threading.Lock()

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        if not requests:
            return []
        with self._load_lock:
            self.engine_calls += 1
            replica = min(range(len(self.groups)), key=lambda i: (self.load[i], i))
            self.load[replica] += 1
        try:
            return self._call(self.groups[replica], requests)
        finally:
            with self._load_lock:
                self.load[replica] -= 1

    def _generate_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        return self.generate(requests)

    def _call(self, group: Engines, requests: list[ChatRequest]) -> list[ChatResult]:
        handle = group.handle
        while handle is not None and not self.abandon.is_set():
            try:
                return bounded_get(handle.generate.remote(requests), self.call_timeout_s, self.abandon)
            except ray.exceptions.GetTimeoutError:
                handle = group.replace(handle, f"did not answer within {self.call_timeout_s:.0f} s")
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                handle = group.replace(handle, f"died ({type(exc).__name__})")
            except AbandonedWait:
                break
        reason = "the run is stopping" if self.abandon.is_set() else "it failed too often"
        error = BackendUnavailableError(f"engine {group.key} unavailable: {reason}")
        return [ChatResult.failed(error) for _ in requests]


class AbandonedWait(Exception):
    """A Ray wait given up because the run is being abandoned."""


def bounded_get(ref: Any, timeout_s: float, abandon: threading.Event) -> Any:
    """`ray.get(ref)`, waiting at most `timeout_s` (GetTimeoutError) and giving up at once when `abandon` is
    set (AbandonedWait; the task is cancelled)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            _cancel(ref)
            raise ray.exceptions.GetTimeoutError(f"no answer within {timeout_s:.0f} s")
        ready, _ = ray.wait([ref], timeout=min(POLL_S, left))
        if ready:
            return ray.get(ref)
        if abandon.is_set():
            _cancel(ref)
            raise AbandonedWait()


def _cancel(ref: Any) -> None:
    """Stop a task's worker (a hung tool); an actor call cannot be forced and is simply dropped."""
    try:
        ray.cancel(ref, force=True)
    except Exception:  # actor calls refuse force=True; an already finished task cannot be cancelled
        pass


@ray.remote(num_cpus=0.25)
def _run_tool(tool: JudgeTool, arguments: dict[str, Any]) -> Evidence:
    return tool.evidence(arguments)


def wrap_tool(tool: JudgeTool, timeout_s: float, abandon: threading.Event) -> JudgeTool:
    """How a run calls `tool`: in the episode's process when it is cheap and safe, else as Ray tasks."""
    return tool if tool.runs_in_process else RayToolProxy.wrap(tool, timeout_s=timeout_s, abandon=abandon)


class RayToolProxy(JudgeTool):
    """A judge tool whose calls run as Ray tasks on CPU workers (sandboxes and retrieval off the driver),
    each bounded by `timeout_s` and dropped when the run is abandoned."""

    inner: Any
    shipped: Any = None  # the tool in Ray's object store: sent to workers once, not with every call
    timeout_s: float = 120.0
    abandon: Any = None  # a threading.Event set when the run stops now

    @property
    def per_candidate(self) -> bool:  # type: ignore[override]
        return self.inner.per_candidate

    @classmethod
    def wrap(cls, tool: JudgeTool, timeout_s: float = 120.0, abandon: threading.Event | None = None) -> RayToolProxy:
        return cls(
            name=tool.name,
            description=tool.description,
            args_schema=tool.args_schema,
            inner=tool,
            shipped=ray.put(tool),
            timeout_s=timeout_s,
            abandon=abandon or threading.Event(),
        )

    def _run(self, **arguments: Any) -> dict[str, Any]:
        return self.evidence(arguments).model_dump()

    def arguments_for(self, prompt, candidate):  # same signature as the tool's
        return self.inner.arguments_for(prompt, candidate)

    def evidence(self, arguments: dict[str, Any]) -> Evidence:
        try:
            return bounded_get(_run_tool.remote(self.shipped, arguments), self.timeout_s, self.abandon)
        except ray.exceptions.GetTimeoutError:
            return Evidence(tool=self.name, ok=False, error=f"tool call timed out after {self.timeout_s:g} s")
        except AbandonedWait:
            return Evidence(tool=self.name, ok=False, error="tool call abandoned: the run is stopping")
        except ray.exceptions.RayError as exc:
            return Evidence(tool=self.name, ok=False, error=f"tool worker failed: {type(exc).__name__}")


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


@contextmanager
def ray_session(config: SynthesisConfig, address: str | None) -> Iterator[None]:
    """Join `address` / $RAY_ADDRESS, or start a local Ray for this run (and stop it afterwards)."""
    if ray.is_initialized():
        yield
        return
    address = address or config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace="prefsmith", log_to_driver=False)
    else:
        ray.init(num_cpus=config.ray.num_cpus, include_dashboard=False, namespace="prefsmith", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


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
    """Run `run_id`'s episodes still to finish, each with the rounds it played and the prompt versions its
    next round resumes with (what a rerun plays, and what a replaced episode worker's episodes play)."""
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
            rows.ensure_episodes(session, run_id, unplayed[:room], model_ids(config)["target"])
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


def play_pending(
    item: PendingEpisode,
    prompt: PromptRecord,
    players: Players,
    book: Book,
    settings: GameSettings,
    on_round: RoundCallback,
) -> EpisodeRecord:
    """Play (or continue) `item`'s episode: from its next round, with the prompt versions it left off with."""
    resume = item.resume_versions
    prompts = None if resume is None else (book.get("target", resume["target"]), book.get("judge", resume["judge"]))
    return play_episode(
        EpisodePrompt(prompt.id, prompt.messages, prompt.meta),
        players,
        book,
        settings,
        first_round=item.rounds_played,
        prompts=prompts,
        on_round=on_round,
        prior=item.prior,
        own=item.own,
    )


class EpisodeRunner:
    """Plays the run's episodes, one call of `play` each (from many threads at once): stores every round as
    it finishes — only while the run's lease is this process's — and counts it into the run's metrics. One
    broken episode is stored as failed, not raised; a database that stays down or a lost lease stops the run
    and leaves in-flight episodes to a rerun."""

    def __init__(
        self, run: PreparedRun, config: SynthesisConfig, players: Players, book: PromptBook, stop: StopRequest
    ) -> None:
        self.run, self.players, self.book, self.stop = run, players, book, stop
        self.settings = game_settings(config)
        self.model_ids = model_ids(config)
        self._lock = threading.Lock()
        # rounds finished together share a transaction; each episode still waits until its round is stored
        self.writer = GroupCommit(self._write, whole_batch=(StorageUnavailableError, LeaseLostError))

    def fence(self, session: Any) -> None:
        leases.renew(session, self.run.lease)

    def _write(self, rounds: list[RoundToStore]) -> None:
        what = (
            f"storing round {rounds[0].record.index} of prompt {rounds[0].prompt_id[:12]}"
            if len(rounds) == 1
            else f"storing {len(rounds)} rounds of run {self.run.run_id}"
        )
        self.run.store(
            what, lambda: store_rounds(self.run.engine, self.run.run_id, rounds, self.model_ids, fence=self.fence)
        )

    def _on_round(self, episode: EpisodeRecord, record: PlayedRound) -> None:
        if self.stop.abandon.is_set():
            raise Abandoned()  # a round finished after "stop now" may be cut short: a rerun plays it again
        try:
            self.writer.store(RoundToStore.of(episode, record))
        except (StorageUnavailableError, LeaseLostError) as exc:
            self.stop.stop_now(str(exc))
            raise Abandoned() from exc
        with self._lock:
            self.run.metrics.count_round(record)
        if self.stop.requested and not episode.finished:
            raise Abandoned()  # stopping: the stored round is where a rerun continues

    def play(self, item: PendingEpisode) -> EpisodeRecord | None:
        p = self.run.prompts[item.prompt_id]
        try:
            episode = play_pending(item, p, self.players, self.book, self.settings, self._on_round)
        except Abandoned:
            return None
        except Exception as exc:  # one broken episode must not stop the run
            if self.stop.abandon.is_set():
                return None
            reason = f"{type(exc).__name__}: {exc}"
            try:
                self.run.store(f"failing episode of prompt {p.id[:12]}", lambda: self._fail(p.id, reason))
            except (StorageUnavailableError, LeaseLostError) as store_exc:
                self.stop.stop_now(str(store_exc))
                return None
            self._count(EpisodeStatus.FAILED)
            return None
        self._count(episode.status)
        return episode

    def _fail(self, prompt_id: str, reason: str) -> None:
        with session_scope(self.run.engine) as session:
            self.fence(session)
            rows.fail_episode(session, self.run.run_id, prompt_id, reason)

    def _count(self, status: EpisodeStatus) -> None:
        with self._lock:
            self.run.metrics.count_episode(status)

    def store_progress(self, status: RunStatus | None = None) -> None:
        store_progress(self.run, self.book, status)


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
        self._thread.join(timeout=RAY_WAIT_S)


def engine_prefix(run: PreparedRun) -> str:
    """Engine actors are named after the run and its lease, so a synthesizer that took a run over never meets
    its predecessor's actors."""
    return f"prefsmith-engine-{run.run_id}-{{key}}-{run.lease.lease_id[:8]}"


def start_engines(
    config: SynthesisConfig, prefix: str, factory: BackendFactory, on_unavailable: Callable[[str], None]
) -> dict[str, list[EngineGroup]]:
    """`replicas` engine actors per model that some role uses, each taking as many concurrent calls as K
    episodes can make of it, named `prefix` with the model's key."""
    calls = max(8, 4 * config.ray.episodes_in_flight)
    engines: dict[str, list[EngineGroup]] = {}
    for key in used_model_keys(config):
        model = config.models[key]
        base = prefix.format(key=key)
        engines[key] = [
            EngineGroup(
                key,
                model,
                base if model.replicas == 1 else f"{base}-r{replica}",
                calls,
                factory,
                max_restarts=config.ray.engine_restarts,
                window_s=config.ray.engine_restart_window_s,
                on_unavailable=on_unavailable,
            )
            for replica in range(model.replicas)
        ]
    return engines


def schedule_episodes(
    runner: EpisodeRunner, in_flight_limit: int, progress: Callable[[RunMetrics], None] | None
) -> None:
    """Play the run's pending episodes with at most `in_flight_limit` (K) in flight, until all are played or a
    stop is requested; report progress every second and store it every 10 s."""
    metrics = runner.run.metrics
    queue = iter(runner.run.pending)
    in_flight: set[Future] = set()
    last_stored = time.perf_counter()
    with runner.writer, ThreadPoolExecutor(in_flight_limit, thread_name_prefix="prefsmith-episode") as pool:
        # Backpressure: never more than K episodes submitted, however many prompts the run has.
        while True:
            while not runner.stop.requested and len(in_flight) < in_flight_limit:
                item = next(queue, None)
                if item is None:
                    break
                in_flight.add(pool.submit(runner.play, item))
            if not in_flight:
                break
            done, in_flight = wait(in_flight, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
            if progress is not None:
                progress(metrics)
            if time.perf_counter() - last_stored > 10 and not runner.stop.abandon.is_set():
                try:
                    runner.store_progress()
                except (StorageUnavailableError, LeaseLostError) as exc:
                    runner.stop.stop_now(str(exc))
                last_stored = time.perf_counter()


def shut_down(engines: dict[str, list[EngineGroup]]) -> EngineSummary:
    """Each model's restarts, usage and nodes (summed over its replicas, as far as they still answer); then
    stop its actors and remove their placement groups."""
    summary = EngineSummary(restarts={key: sum(g.restarts for g in groups) for key, groups in engines.items()})
    for key, groups in engines.items():
        usages = []
        for g in groups:
            if g.handle is None:
                continue
            try:
                usages.append(ray.get(g.handle.usage.remote(), timeout=RAY_WAIT_S))
                summary.nodes.setdefault(f"engine:{key}", []).append(
                    ray.get(g.handle.node_id.remote(), timeout=RAY_WAIT_S)
                )
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
                print(f"prefsmith: engine {key} gave no usage ({type(exc).__name__})", file=sys.stderr, flush=True)
            try:
                ray.kill(g.handle, no_restart=True)
            except Exception:  # already gone
                pass
            g.remove_placement_group()
        if usages:
            summary.usage[key] = {
                "completion_tokens": sum(u["completion_tokens"] for u in usages),
                "busy_s": sum(u["busy_s"] for u in usages),
                "wall_s": max(u["wall_s"] for u in usages),
                "engine_calls": sum(u["engine_calls"] for u in usages),
                "replicas": len(groups),
                "per_replica_completion_tokens": [u["completion_tokens"] for u in usages],
                "per_replica_threads": [u["threads"] for u in usages],
            }
    return summary


@dataclass
class EngineSummary:
    """What a run's engines did: restarts, usage and Ray nodes by model key."""

    restarts: dict[str, int] = field(default_factory=dict)
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, list[str]] = field(default_factory=dict)

    def into(self, report: SynthesisReport) -> None:
        report.engine_restarts, report.engine_usage = self.restarts, self.usage
        report.metrics.nodes |= self.nodes


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


def play_in_driver(
    config: SynthesisConfig,
    run: PreparedRun,
    book: PromptBook,
    tools: dict[str, JudgeTool],
    factory: BackendFactory,
    stop: StopRequest,
    progress: Callable[[RunMetrics], None] | None,
) -> None:
    """Episodes as threads of this process (`ray.episode_workers: 0`), the engines and tool tasks on Ray."""
    engines = start_engines(config, engine_prefix(run), factory, stop.stop_now)
    try:
        backends = {
            key: ActorBackend(groups, config.models[key].max_batch_size, abandon=stop.abandon)
            for key, groups in engines.items()
        }
        wrap = functools.partial(wrap_tool, timeout_s=config.tools.call_timeout_s, abandon=stop.abandon)
        players = build_players(config, backends, wrap_tool=wrap, tools=tools)
        run.metrics.nodes["episodes"] = [ray.get_runtime_context().get_node_id()]
        schedule_episodes(EpisodeRunner(run, config, players, book, stop), config.ray.episodes_in_flight, progress)
    finally:
        shut_down(engines).into(run.report)


def synthesize(
    config: SynthesisConfig,
    *,
    run_id: str | None = None,
    db_url: str | None = None,
    limit: int | None = None,
    address: str | None = None,
    only_unplayed: bool = False,
    progress: Callable[[RunMetrics], None] | None = None,
    backend_factory: BackendFactory = create_backend,
    skip_retired_by: Sequence[str] = (),
) -> SynthesisReport:
    """Play every pending prompt of the run (of at most `limit` prompts in all), storing each round as it
    finishes.

    `only_unplayed` (refresh) also skips prompts that any earlier run with the same config hash finished;
    `skip_retired_by` (refresh, iterate) those that these target models mastered or found out of reach.
    `backend_factory` builds each engine actor's backend (benchmarks: a simulated or a recording engine).
    """
    tools = build_tools(config.tools)  # a tool that cannot be built is a config error before anything is stored
    run = prepare_run(
        config,
        run_id or default_run_id(config),
        db_url,
        limit=limit,
        only_unplayed=only_unplayed,
        skip_retired_by=skip_retired_by,
    )
    if not run.pending:
        finish(run, None, None)
        return run.report

    played: Book | None = None  # the run's prompt book once episodes have played
    stop = StopRequest()
    try:
        book = run.store(
            f"loading the prompt versions of run {run.run_id}", lambda: restore_book(run.engine, run.run_id)
        )
        with ray_session(config, address), stop, LeaseKeeper(run, stop):
            if config.ray.episode_workers:
                from pipelines.episode_workers import play_on_workers  # it builds on this module

                played = play_on_workers(config, run, book, backend_factory, stop, progress)
            else:
                played = book
                play_in_driver(config, run, book, tools, backend_factory, stop, progress)
    except BaseException as exc:
        stop.reason = stop.reason or f"{type(exc).__name__}: {exc}"
        finish(run, played, stop.reason)
        raise
    run.report.interrupted = stop.reason
    finish(run, played, stop.reason)
    if progress is not None:
        progress(run.metrics)
    return run.report
