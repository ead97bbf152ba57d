"""The model engine actors of a run: one group of replicas per configured model, created with the resources the
config asks for, replaced when one dies or hangs, shut down with their usage; the backend the players call
them through, and the registry that hands them to episode workers."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import ray

from agents.backends import (
    Backend,
    BackendFactory,
    BackendUnavailableError,
    ChatRequest,
    ChatResult,
    create_backend,
)
from configs.schema import ModelConfig, SynthesisConfig, omp_threads, usable_cpus
from pipelines.game_setup import used_model_keys
from pipelines.synthesis.ray_calls import RAY_WAIT_S, AbandonedWait, bounded_get, kill, runtime_env
from pipelines.synthesis.run import PreparedRun, SynthesisReport

ENGINE_CALL_TIMEOUT_S = 900.0
PLACEMENT_WAIT_S = 600.0  # bound on waiting for GPUs of a placement group


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
            "runtime_env": runtime_env(),
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
            kill(dead)
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
            kill(g.handle)
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


class EngineRegistry:
    """Owns the run's engine actors (`start_engines`) when episodes play in workers: hands out each replica's
    current handle and replaces a dead or hung one, once, whichever worker noticed first."""

    def __init__(self, config: SynthesisConfig, prefix: str, factory: BackendFactory) -> None:
        self.unavailable: str | None = None
        self.engines = start_engines(config, prefix, factory, self._give_up)

    def _give_up(self, reason: str) -> None:
        self.unavailable = self.unavailable or reason

    def handle(self, key: str, replica: int) -> Any:
        return self.engines[key][replica].handle

    def replace(self, key: str, replica: int, dead: Any, reason: str) -> Any | None:
        return self.engines[key][replica].replace(dead, reason)

    def why_unavailable(self) -> str | None:
        return self.unavailable

    def shut_down(self) -> EngineSummary:
        return shut_down(self.engines)


class RemoteEngines:
    """A worker's view of one replica in the `EngineRegistry` (what `ActorBackend` calls)."""

    def __init__(self, registry: Any, key: str, replica: int) -> None:
        self.registry, self.key, self.replica = registry, key, replica
        self._handle = ray.get(registry.handle.remote(key, replica), timeout=RAY_WAIT_S)

    @property
    def handle(self) -> Any:
        return self._handle

    def replace(self, dead: Any, reason: str) -> Any | None:
        self._handle = ray.get(self.registry.replace.remote(self.key, self.replica, dead, reason), timeout=None)
        return self._handle
