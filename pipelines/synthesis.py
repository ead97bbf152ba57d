"""Synthesis as a service on Ray: engine actors shared by every role that names their model, tools on CPU
workers, K episodes in flight, every round stored as it finishes, resumable at any point.

`synthesize` is what `prefsmith synthesize` (and `python -m pipelines.cli synthesize` under `ray job submit`)
runs; it joins a cluster when given an address and starts a local Ray otherwise.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import ray
from pydantic import BaseModel
from sqlalchemy import Engine

from agents.backends import Backend, BackendUnavailableError, ChatRequest, ChatResult, create_backend
from agents.game import EpisodePrompt
from configs.loading import config_hash
from configs.schema import ModelConfig, SynthesisConfig
from pipelines.episode import EpisodeRecord, PromptBook, PromptRef, RoundRecord, play_episode
from pipelines.game_setup import build_players, game_settings, new_prompt_book
from pipelines.prompt_sources import load_prompts
from pipelines.recording import store_played_round
from storage import records as rows
from storage.db import session_scope
from storage.migrate import open_database
from tools.base import Evidence, JudgeTool

ENGINE_RESTARTS = 3
ENGINE_CALL_TIMEOUT_S = 900.0
PASSED_ENV = (
    "PREFSMITH_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "VLLM_CPU_KVCACHE_SPACE",
    "VLLM_CPU_OMP_THREADS_BIND",
    "OMP_NUM_THREADS",
)


BackendFactory = Callable[[ModelConfig], Backend]


class EngineActor:
    """One model engine in a Ray actor. Threaded (many calls at once), so the backend inside batches the
    requests of concurrent callers into shared engine calls."""

    def __init__(
        self, model_config: ModelConfig, factory: BackendFactory | None = None, record_batches: bool = False
    ) -> None:
        import torch

        torch.set_num_threads(model_config.threads)
        self.backend = (factory or create_backend)(model_config)
        self.completion_tokens = 0
        self.busy_s = 0.0
        self.first_call: float | None = None
        self.last_return: float | None = None
        if record_batches:  # the benchmark replays exactly the engine calls the pipeline made, to compare
            self.backend.recorded_calls = []
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
            window = 0.0 if self.first_call is None else self.last_return - self.first_call
            return {
                "completion_tokens": self.completion_tokens,
                "busy_s": self.busy_s,
                "wall_s": window,
                "engine_calls": self.backend.engine_calls,
            }

    def recorded_batches(self) -> list[list[ChatRequest]]:
        return list(self.backend.recorded_calls or [])

    def engine_calls(self) -> int:
        return self.backend.engine_calls

    def pid(self) -> int:
        return os.getpid()


class EngineGroup:
    """Owns the engine actor of one configured model: creates it with the resources the config asks for
    (a placement group for tensor parallelism), and replaces it — a bounded number of times — when it dies
    or hangs. Everything else asks it for the current handle."""

    def __init__(
        self,
        key: str,
        model: ModelConfig,
        run_id: str,
        max_concurrency: int,
        factory: BackendFactory | None = None,
        record_batches: bool = False,
    ) -> None:
        self.key, self.model, self.max_concurrency = key, model, max_concurrency
        self.factory, self.record_batches = factory, record_batches
        self.name = f"prefsmith-engine-{run_id}-{key}"[:120]
        self.restarts = 0
        self._lock = threading.Lock()
        self._placement_group = None
        self.handle = self._create()

    def _create(self) -> Any:
        options: dict[str, Any] = {
            "name": self.name,
            "namespace": "prefsmith",
            "max_concurrency": self.max_concurrency,
            "num_cpus": self.model.num_cpus,
            "num_gpus": self.model.num_gpus,
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
                ray.get(self._placement_group.ready())
            options |= {
                "num_gpus": 0,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    self._placement_group, placement_group_capture_child_tasks=True
                ),
            }
        return ray.remote(EngineActor).options(**options).remote(self.model, self.factory, self.record_batches)

    def replace(self, dead: Any, reason: str) -> Any | None:
        """A fresh actor in place of `dead` (unless another caller already replaced it); None once the
        restart budget is spent."""
        with self._lock:
            if self.handle is not dead:
                return self.handle
            if self.restarts >= ENGINE_RESTARTS:
                return None
            self.restarts += 1
            print(
                f"prefsmith: engine {self.key} {reason}; restarting it ({self.restarts}/{ENGINE_RESTARTS})",
                file=sys.stderr,
                flush=True,
            )
            try:
                ray.kill(dead, no_restart=True)
            except Exception:  # noqa: BLE001 - it may be gone already
                pass
            self.handle = self._create()
            return self.handle


class ActorBackend(Backend):
    """The backend protocol on the driver side of an engine actor: concurrent episodes' requests are
    gathered into one actor call; a dead or hung actor is replaced and the call retried."""

    supports_json_schema = True

    def __init__(self, group: EngineGroup, max_batch_size: int, call_timeout_s: float = ENGINE_CALL_TIMEOUT_S):
        super().__init__(max_batch_size)
        self.group, self.call_timeout_s = group, call_timeout_s

    def _generate_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        handle = self.group.handle
        while handle is not None:
            try:
                return ray.get(handle.generate.remote(requests), timeout=self.call_timeout_s)
            except ray.exceptions.GetTimeoutError:
                handle = self.group.replace(handle, f"did not answer within {self.call_timeout_s:.0f} s")
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                handle = self.group.replace(handle, f"died ({type(exc).__name__})")
        error = BackendUnavailableError(f"engine {self.group.key} failed {ENGINE_RESTARTS + 1} times; giving up")
        return [ChatResult.failed(error) for _ in requests]


@ray.remote(num_cpus=0.25)
def _run_tool(tool: JudgeTool, arguments: dict[str, Any]) -> Evidence:
    return tool.evidence(arguments)


class RayToolProxy(JudgeTool):
    """A judge tool whose calls run as Ray tasks on CPU workers (sandboxes and retrieval off the driver)."""

    inner: Any

    @property
    def per_candidate(self) -> bool:  # type: ignore[override]
        return self.inner.per_candidate

    @classmethod
    def wrap(cls, tool: JudgeTool) -> RayToolProxy:
        return cls(name=tool.name, description=tool.description, args_schema=tool.args_schema, inner=tool)

    def _run(self, **arguments: Any) -> dict[str, Any]:
        return self.evidence(arguments).model_dump()

    def arguments_for(self, prompt, candidate):  # noqa: ANN001, ANN201 - same signature as the tool's
        return self.inner.arguments_for(prompt, candidate)

    def evidence(self, arguments: dict[str, Any]) -> Evidence:
        try:
            return ray.get(_run_tool.remote(self.inner, arguments))
        except ray.exceptions.RayError as exc:
            return Evidence(tool=self.name, ok=False, error=f"tool worker failed: {type(exc).__name__}")


class RunMetrics(BaseModel):
    """What `prefsmith runs show` prints under metrics, updated while the run goes."""

    episodes_total: int = 0
    episodes_done: int = 0
    accepted: int = 0
    failed: int = 0
    rounds: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    already_played: int = 0

    @property
    def accept_rate(self) -> float:
        return self.accepted / self.episodes_done if self.episodes_done else 0.0

    @property
    def pairs_per_min(self) -> float:
        return 60 * self.accepted / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0

    def stored(self) -> dict[str, Any]:
        return self.model_dump() | {
            "accept_rate": round(self.accept_rate, 4),
            "pairs_per_min": round(self.pairs_per_min, 3),
            "target_tokens_per_s": round(self.tokens_per_s, 2),
        }


@dataclass
class SynthesisReport:
    run_id: str
    config_hash: str
    metrics: RunMetrics
    interrupted: str | None = None
    prompts_total: int = 0
    engine_restarts: dict[str, int] = field(default_factory=dict)
    engine_usage: dict[str, dict[str, Any]] = field(default_factory=dict)
    engine_batches: dict[str, list[list[ChatRequest]]] = field(default_factory=dict)

    def summary(self) -> str:
        m = self.metrics
        head = (
            f"run {self.run_id}: " if not self.interrupted else f"run {self.run_id} interrupted ({self.interrupted}): "
        )
        return (
            f"{head}{m.episodes_done}/{m.episodes_total} episodes played this time, {m.accepted} accepted "
            f"({m.accept_rate:.0%}), {m.failed} failed, {m.rounds} rounds; {m.already_played} already played; "
            f"{m.pairs_per_min:.2f} pairs/min, {m.tokens_per_s:.1f} target tokens/s over {m.seconds:.0f} s"
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
    """SIGINT/SIGTERM: the first stops new episodes and lets in-flight ones finish their rounds; the second
    abandons in-flight episodes after the round they are in (what was stored stays stored)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.abandon = threading.Event()
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            print(
                f"\nprefsmith: {self.signal_name}: finishing in-flight episodes (again to abandon them)",
                file=sys.stderr,
                flush=True,
            )
        elif not self.abandon.is_set():
            self.abandon.set()
            print(
                f"\nprefsmith: {signal.Signals(signum).name} again: abandoning in-flight episodes after their "
                "current round (stored rounds stay stored)",
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
    """Raised inside an episode thread after a stored round, when a second signal asks to stop now."""


def restore_book(engine: Engine, run_id: str, run_metrics: dict[str, Any]) -> PromptBook:
    with session_scope(engine) as session:
        stored = rows.load_prompt_versions(session, run_id)
    if not stored:
        return new_prompt_book()
    refs = [PromptRef(v.role, v.version, v.text, v.parent_version, v.critique) for v in stored]  # type: ignore[arg-type]
    return PromptBook.restore(refs, run_metrics.get("current_prompt_versions", {"target": 0, "judge": 0}))


def synthesize(
    config: SynthesisConfig,
    *,
    run_id: str | None = None,
    db_url: str | None = None,
    limit: int | None = None,
    address: str | None = None,
    only_unplayed: bool = False,
    progress: Any = None,
    backend_factory: BackendFactory | None = None,
    record_batches: bool = False,
) -> SynthesisReport:
    """Play every pending prompt of the run (at most `limit`), storing each round as it finishes.

    `only_unplayed` (refresh) also skips prompts that any earlier run with the same config hash finished.
    `backend_factory` and `record_batches` are for benchmarks (a simulated engine; replaying engine calls).
    """
    run_id = run_id or default_run_id(config)
    digest = config_hash(config)
    engine = open_database(db_url or config.storage.url, migrate=True)
    prompts = {p.id: p for p in load_prompts(config.prompts)}
    with session_scope(engine) as session:
        skip = rows.played_prompt_ids(session, digest) if only_unplayed else set()
        run = rows.ensure_run(session, run_id, digest, config.model_dump(mode="json"))
        run_metrics = dict(run.metrics or {})
        rows.add_prompts(session, list(prompts.values()))
        rows.ensure_episodes(session, run_id, [pid for pid in prompts if pid not in skip])
        pending = [(pid, played) for pid, played in rows.pending_episodes(session, run_id) if pid in prompts]
        rows.update_run(session, run_id, status="running")
    if limit is not None:
        pending = pending[:limit]
    metrics = RunMetrics(episodes_total=len(pending), already_played=len(prompts) - len(pending))
    report = SynthesisReport(run_id, digest, metrics, prompts_total=len(prompts))
    if not pending:
        with session_scope(engine) as session:
            rows.update_run(session, run_id, status="completed")
        engine.dispose()
        return report

    book = restore_book(engine, run_id, run_metrics)
    model_ids = {role: config.models[key].name for role, key in config.roles.model_dump().items()}
    settings = game_settings(config)
    lock = threading.Lock()
    started = time.perf_counter()

    def persist_metrics(status: str | None = None) -> None:
        metrics.seconds = time.perf_counter() - started
        current_target, current_judge = book.current()
        stored = metrics.stored() | {
            "current_prompt_versions": {"target": current_target.version, "judge": current_judge.version}
        }
        with session_scope(engine) as session:
            rows.update_run(session, run_id, status=status, metrics=run_metrics | stored)

    with ray_session(config, address), StopRequest() as stop:
        K = config.ray.episodes_in_flight
        groups = {
            key: EngineGroup(key, config.models[key], run_id, max(8, 4 * K), backend_factory, record_batches)
            for key in dict.fromkeys(config.roles.model_dump().values())
        }
        backends = {key: ActorBackend(g, config.models[key].max_batch_size) for key, g in groups.items()}
        players = build_players(config, backends)
        players.judge.tools = {name: RayToolProxy.wrap(t) for name, t in players.judge.tools.items()}

        def on_round(episode: EpisodeRecord, record: RoundRecord) -> None:
            store_played_round(engine, run_id, episode, record, model_ids)
            with lock:
                metrics.rounds += 1
                metrics.completion_tokens += sum(c.completion_tokens or 0 for c in record.candidates)
            if stop.abandon.is_set() and not episode.finished:
                raise Abandoned()

        def play(prompt_id: str, rounds_played: int) -> EpisodeRecord | None:
            p = prompts[prompt_id]
            prompt = EpisodePrompt(p.id, p.messages, p.meta)
            try:
                episode = play_episode(prompt, players, book, settings, first_round=rounds_played, on_round=on_round)
            except Abandoned:
                return None
            except Exception as exc:  # noqa: BLE001 - one broken episode must not stop the run
                with session_scope(engine) as session:
                    rows.fail_episode(session, run_id, prompt_id, f"{type(exc).__name__}: {exc}")
                with lock:
                    metrics.episodes_done += 1
                    metrics.failed += 1
                return None
            with lock:
                metrics.episodes_done += 1
                metrics.accepted += episode.status == "accepted"
                metrics.failed += episode.status == "failed"
            return episode

        queue = iter(pending)
        in_flight: set[Future] = set()
        last_persist = time.perf_counter()
        with ThreadPoolExecutor(K, thread_name_prefix="prefsmith-episode") as pool:
            # Backpressure: never more than K episodes submitted, however many prompts the run has.
            while True:
                while not stop.requested and len(in_flight) < K:
                    item = next(queue, None)
                    if item is None:
                        break
                    in_flight.add(pool.submit(play, *item))
                if not in_flight:
                    break
                done, in_flight = wait(in_flight, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
                if progress is not None:
                    progress(metrics)
                if time.perf_counter() - last_persist > 10:
                    persist_metrics()
                    last_persist = time.perf_counter()
        report.engine_restarts = {key: g.restarts for key, g in groups.items()}
        report.engine_usage = {key: ray.get(g.handle.usage.remote()) for key, g in groups.items()}
        if record_batches:
            report.engine_batches = {key: ray.get(g.handle.recorded_batches.remote()) for key, g in groups.items()}
        for g in groups.values():
            try:
                ray.kill(g.handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        report.interrupted = stop.signal_name
    persist_metrics("interrupted" if report.interrupted else "completed")
    if progress is not None:
        progress(metrics)
    engine.dispose()
    return report
