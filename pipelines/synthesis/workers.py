"""Episodes off the driver (`ray.episode_workers: N`): N Ray actors play the run's K episodes in flight, each
its equal share, on whatever nodes have room (or offer `ray.episode_worker_resources`).

The driver is a thin scheduler. Every tick it hands out prompts to workers with free slots, collects each
worker's finished rounds and ended episodes with one call per worker (never a round-trip per episode or
round), and writes them in one transaction fenced by the run's lease. Stored rounds are the only record: a
worker that dies or hangs is replaced, and the episodes it held continue on the new one from their last
stored round, so rounds it finished that the driver did not store yet are played again, exactly as a rerun
plays a round cut short. Engines are found through one registry actor, which also replaces a dead or hung engine
once for every worker; the run's prompt book lives in one actor, so every episode plays with and promotes
the same prompt versions.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ray

from agents.backends import BackendFactory
from configs.schema import SynthesisConfig
from pipelines.episode import PromptBook, PromptRef
from pipelines.game_setup import model_ids, used_model_keys
from pipelines.recording import RoundToStore, store_rounds
from pipelines.synthesis.engines import EngineRegistry, RemoteEngines, engine_prefix
from pipelines.synthesis.playing import EpisodePlayer, episode_slots
from pipelines.synthesis.ray_calls import RAY_WAIT_S, kill, runtime_env
from pipelines.synthesis.run import (
    STORE_PROGRESS_S,
    PendingEpisode,
    PreparedRun,
    RunMetrics,
    StopRequest,
    pending_episodes,
    store_progress,
)
from storage import leases
from storage import records as rows
from storage.db import session_scope
from storage.leases import LeaseLostError
from storage.records import PromptRecord
from storage.retries import StorageUnavailableError
from storage.vocabulary import EpisodeStatus
from tools.registry import build_tools

TICK_S = 0.25  # how often the driver collects the workers' rounds


@dataclass(frozen=True)
class EpisodeEnd:
    """An episode a worker is done with: its final status, or None when it was left for a rerun (the run is
    stopping); `failure` when it broke (the driver closes it as failed)."""

    prompt_id: str
    status: EpisodeStatus | None
    failure: str | None = None


class PromptBookActor:
    """The run's `PromptBook`, shared by the episodes of every worker."""

    def __init__(self, versions: list[PromptRef], current: dict[str, int]) -> None:
        self.book = PromptBook.restore(versions, current)

    def current(self) -> tuple[PromptRef, PromptRef]:
        return self.book.current()

    def get(self, role: str, version: int) -> PromptRef:
        return self.book.get(role, version)

    def propose(self, parent: PromptRef, text: str, critique: str) -> PromptRef:
        return self.book.propose(parent, text, critique)

    def promote(self, ref: PromptRef) -> bool:
        return self.book.promote(ref)

    def snapshot(self) -> tuple[list[PromptRef], dict[str, int]]:
        return self.book.snapshot()


class RemoteBook:
    """A worker's view of the `PromptBookActor` (the `Book` an episode plays with)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def current(self) -> tuple[PromptRef, PromptRef]:
        return ray.get(self.actor.current.remote(), timeout=RAY_WAIT_S)

    def get(self, role: str, version: int) -> PromptRef:
        return ray.get(self.actor.get.remote(role, version), timeout=RAY_WAIT_S)

    def propose(self, parent: PromptRef, text: str, critique: str) -> PromptRef:
        return ray.get(self.actor.propose.remote(parent, text, critique), timeout=RAY_WAIT_S)

    def promote(self, ref: PromptRef) -> bool:
        return ray.get(self.actor.promote.remote(ref), timeout=RAY_WAIT_S)


class EpisodeWorker(EpisodePlayer):
    """Plays up to `slots` episodes at once in this process; keeps what they produce until `collect`."""

    def __init__(self, config: SynthesisConfig, registry: Any, book: Any, slots: int) -> None:
        replicas = {
            key: [RemoteEngines(registry, key, r) for r in range(config.models[key].replicas)]
            for key in used_model_keys(config)
        }
        super().__init__(config, replicas, build_tools(config.tools), RemoteBook(book), threading.Event())
        self._stopping = False
        self.pool = ThreadPoolExecutor(slots, thread_name_prefix="prefsmith-episode")
        self._rounds: list[RoundToStore] = []
        self._ended: list[EpisodeEnd] = []

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        return os.getpid()

    def assign(self, items: list[tuple[PendingEpisode, PromptRecord]]) -> None:
        for item, prompt in items:
            self.pool.submit(self.play, item, prompt)

    def collect(self) -> tuple[list[RoundToStore], list[EpisodeEnd]]:
        """The rounds finished and the episodes ended since the last call."""
        with self._lock:
            rounds, self._rounds = self._rounds, []
            ended, self._ended = self._ended, []
        return rounds, ended

    def stop(self, now: bool) -> None:
        """Start no new episode; end each in-flight one after its current round (`now`: at once, unstored)."""
        self._stopping = True
        if now:
            self.abandon.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def keep(self, played: RoundToStore) -> None:
        with self._lock:
            self._rounds.append(played)

    def end(self, prompt_id: str, status: EpisodeStatus | None, failure: str | None = None) -> None:
        with self._lock:
            self._ended.append(EpisodeEnd(prompt_id, status, failure))


class Scheduler:
    """The driver's side: hands prompts out, collects and stores what the workers played, counts progress, and
    replaces a worker that died or hung (at most `ray.episode_worker_restarts` times): its episodes play again
    on the new one from their last stored round, as a rerun would play them."""

    def __init__(
        self,
        run: PreparedRun,
        config: SynthesisConfig,
        new_worker: Callable[[int], Any],
        registry: Any,
        stop: StopRequest,
    ) -> None:
        self.run, self.new_worker, self.registry, self.stop = run, new_worker, registry, stop
        self.model_ids = model_ids(config)
        count = config.ray.episode_workers
        self.slots = episode_slots(config)
        self.restarts_left = config.ray.episode_worker_restarts
        self.workers: list[Any] = [new_worker(w) for w in range(count)]
        self.assigned: list[dict[str, PendingEpisode]] = [{} for _ in range(count)]  # handed out, not ended
        self.queue = iter(run.pending)
        self.again: deque[PendingEpisode] = deque()  # a replaced worker's episodes, handed out first
        self.told_to_stop = False

    @property
    def in_flight(self) -> int:
        return sum(len(mine) for mine in self.assigned)

    def _next(self) -> PendingEpisode | None:
        return self.again.popleft() if self.again else next(self.queue, None)

    def hand_out(self) -> None:
        """Keep every worker holding twice the episodes it plays at once: the next ones wait on the worker,
        not on the driver's next tick."""
        for w, worker in enumerate(self.workers):
            batch: list[tuple[PendingEpisode, PromptRecord]] = []
            while len(self.assigned[w]) + len(batch) < 2 * self.slots:
                item = self._next()
                if item is None:
                    break
                batch.append((item, self.run.prompts[item.prompt_id]))
            if batch:
                worker.assign.remote(batch)
                self.assigned[w].update((item.prompt_id, item) for item, _ in batch)

    def _answers(self) -> tuple[list[tuple[list[RoundToStore], list[EpisodeEnd]] | None], dict[int, str]]:
        """Each worker's rounds and ended episodes since the last tick, None for one that died or hung; and
        those workers, with how they failed (each is replaced once what the others sent is stored)."""
        refs = [worker.collect.remote() for worker in self.workers]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=RAY_WAIT_S)
        answers: list[tuple[list[RoundToStore], list[EpisodeEnd]] | None] = []
        failures: dict[int, str] = {}
        for w, ref in enumerate(refs):
            if ref not in ready:
                failures[w] = f"did not answer within {RAY_WAIT_S:.0f} s"
                answers.append(None)
                continue
            try:
                answers.append(ray.get(ref))
            except ray.exceptions.RayError as exc:
                failures[w] = f"died ({type(exc).__name__})"
                answers.append(None)
        return answers, failures

    def collect(self) -> None:
        """One call per worker; everything they finished stored in one transaction, then counted; then a
        worker that died or hung is replaced. An engine the registry gave up on (it failed too often) stops the
        run."""
        answers, failures = self._answers()
        try:
            unavailable = ray.get(self.registry.why_unavailable.remote(), timeout=RAY_WAIT_S)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
            self.stop.stop_now(f"the engine registry failed ({type(exc).__name__}); a rerun plays what is left")
            return
        if unavailable is not None:
            self.stop.stop_now(unavailable)
        rounds = [r for answer in answers if answer is not None for r in answer[0]]
        ended = [e for answer in answers if answer is not None for e in answer[1]]
        failed = [(e.prompt_id, e.failure) for e in ended if e.failure is not None]
        if rounds or failed:
            try:
                self.run.store(
                    f"storing {len(rounds)} rounds of run {self.run.run_id}",
                    lambda: store_rounds(
                        self.run.engine,
                        self.run.run_id,
                        rounds,
                        self.model_ids,
                        failed=failed,
                        fence=lambda session: leases.renew(session, self.run.lease),
                    ),
                )
            except (StorageUnavailableError, LeaseLostError) as exc:
                self.stop.stop_now(str(exc))
                return
        metrics = self.run.metrics
        for r in rounds:
            metrics.count_round(r.record)
        for w, answer in enumerate(answers):
            for e in answer[1] if answer is not None else ():
                self.assigned[w].pop(e.prompt_id, None)
                if e.status is not None:
                    metrics.count_episode(e.status)
        for w, reason in failures.items():
            if not self.stop.abandon.is_set():
                self.replace(w, reason)

    def replace(self, w: int, reason: str) -> None:
        """A new worker in place of worker `w`; the episodes it held continue from where the database has
        them (rounds it played but the driver never collected are played again, identically)."""
        if self.restarts_left <= 0:
            self.stop.stop_now(f"an episode worker {reason}, and no restart is left; a rerun plays what it left")
            return
        self.restarts_left -= 1
        kill(self.workers[w])
        held = list(self.assigned[w])
        try:
            pending, statuses = self.run.store(
                f"loading the episodes of a replaced worker of run {self.run.run_id}",
                lambda: stored_state(self.run.engine, self.run.run_id, held),
            )
        except (StorageUnavailableError, LeaseLostError) as exc:
            self.stop.stop_now(str(exc))
            return
        for status in statuses:  # ended with its last round stored; the worker died before saying so
            self.run.metrics.count_episode(status)
        self.again.extendleft(reversed(pending))
        self.assigned[w] = {}
        self.workers[w] = self.new_worker(w)
        self.run.metrics.episode_worker_restarts += 1
        print(
            f"prefsmith: episode worker {w} {reason}; replaced it, {len(pending)} of its episodes play again "
            "from their last stored round",
            file=sys.stderr,
            flush=True,
        )

    def tell_stop(self, now: bool) -> None:
        for worker in self.workers:
            worker.stop.remote(now)

    def run_to_end(self, book: RemoteBook, progress: Callable[[RunMetrics], None] | None) -> None:
        last_stored = time.perf_counter()
        while True:
            if self.stop.abandon.is_set():
                self.tell_stop(now=True)  # what the workers still hold is played again by a rerun
                return
            if self.stop.requested and not self.told_to_stop:
                self.tell_stop(now=False)
                self.told_to_stop = True
            if not self.stop.requested:
                self.hand_out()
            if not self.in_flight:
                return
            time.sleep(TICK_S)
            self.collect()
            if progress is not None:
                progress(self.run.metrics)
            if time.perf_counter() - last_stored > STORE_PROGRESS_S and not self.stop.abandon.is_set():
                try:
                    store_progress(self.run, book)
                except (StorageUnavailableError, LeaseLostError) as exc:
                    self.stop.stop_now(str(exc))
                last_stored = time.perf_counter()


def stored_state(engine: Any, run_id: str, prompt_ids: list[str]) -> tuple[list[PendingEpisode], list[EpisodeStatus]]:
    """Of `prompt_ids`' episodes in run `run_id`: those still to finish, as a rerun would resume them, and the
    final statuses of those that did."""
    with session_scope(engine) as session:
        unfinished = {item.prompt_id: item for item in pending_episodes(session, run_id)}
        finished = rows.episode_statuses(session, run_id, [p for p in prompt_ids if p not in unfinished])
    pending = [unfinished[p] for p in prompt_ids if p in unfinished]
    return pending, [EpisodeStatus(status) for status in finished.values()]


def play_on_workers(
    config: SynthesisConfig,
    run: PreparedRun,
    book: PromptBook,
    factory: BackendFactory,
    stop: StopRequest,
    progress: Callable[[RunMetrics], None] | None,
) -> PromptBook:
    """Play the run's pending episodes on `ray.episode_workers` actors; the prompt book as they left it."""
    env = runtime_env()
    registry: Any = (
        ray.remote(EngineRegistry)
        .options(num_cpus=0, max_concurrency=64, runtime_env=env)
        .remote(config, engine_prefix(run), factory)
    )
    book_actor: Any = ray.remote(PromptBookActor).options(num_cpus=0, max_concurrency=1).remote(*book.snapshot())
    slots = episode_slots(config)
    started = [0]

    def new_worker(w: int) -> Any:
        started[0] += 1
        return (
            ray.remote(EpisodeWorker)
            .options(
                name=f"prefsmith-episodes-{run.run_id}-{run.lease.lease_id[:8]}-{w}-{started[0]}"[:120],
                namespace="prefsmith",
                num_cpus=config.ray.episode_worker_cpus,
                resources=dict(config.ray.episode_worker_resources),
                max_concurrency=4,  # collect and stop answer while assign's episodes play on the worker's threads
                runtime_env=env,
            )
            .remote(config, registry, book_actor, slots)
        )

    scheduler = Scheduler(run, config, new_worker, registry, stop)
    try:
        run.metrics.nodes["episodes"] = ray.get([w.node_id.remote() for w in scheduler.workers])
        run.metrics.episode_workers = len(scheduler.workers)
        scheduler.run_to_end(RemoteBook(book_actor), progress)
        versions, current = ray.get(book_actor.snapshot.remote(), timeout=RAY_WAIT_S)
        return PromptBook.restore(versions, current)
    finally:
        for worker in scheduler.workers:
            kill(worker)
        try:
            ray.get(registry.shut_down.remote(), timeout=10 * RAY_WAIT_S).into(run.report)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
            print(f"prefsmith: the engines gave no usage ({type(exc).__name__})", file=sys.stderr, flush=True)
        kill(registry)
        kill(book_actor)
