"""Episodes as threads of the driver (`ray.episode_workers: 0`, the embedded default): K episodes in flight in
this process, each finished round stored at once (rounds finished together share a transaction), the engines
and the tool tasks on Ray."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import ray

from agents.backends import BackendFactory
from configs.schema import SynthesisConfig
from pipelines.episode import PromptBook
from pipelines.game_setup import model_ids
from pipelines.recording import GroupCommit, RoundToStore, store_rounds
from pipelines.synthesis.engines import EngineGroup, engine_prefix, shut_down, start_engines
from pipelines.synthesis.playing import EpisodePlayer, episode_slots
from pipelines.synthesis.run import STORE_PROGRESS_S, Abandoned, PreparedRun, RunMetrics, StopRequest, store_progress
from storage import leases
from storage import records as rows
from storage.db import session_scope
from storage.leases import LeaseLostError
from storage.retries import StorageUnavailableError
from storage.vocabulary import EpisodeStatus
from tools.base import JudgeTool


class DriverPlayer(EpisodePlayer):
    """Plays the run's episodes in the driver's threads: stores every round as it finishes — only while the
    run's lease is this process's — and counts it into the run's metrics; a broken episode is stored as
    failed. A database that stays down or a lost lease stops the run and leaves in-flight episodes to a
    rerun."""

    def __init__(
        self,
        run: PreparedRun,
        config: SynthesisConfig,
        engines: dict[str, list[EngineGroup]],
        tools: dict[str, JudgeTool],
        book: PromptBook,
        stop: StopRequest,
    ) -> None:
        super().__init__(config, engines, tools, book, stop.abandon)
        self.run, self.stop = run, stop
        self.model_ids = model_ids(config)
        # rounds finished together share a transaction; each episode still waits until its round is stored
        self.writer = GroupCommit(self._write, whole_batch=(StorageUnavailableError, LeaseLostError))

    @property
    def stopping(self) -> bool:
        return self.stop.requested

    def keep(self, played: RoundToStore) -> None:
        try:
            self.writer.store(played)
        except (StorageUnavailableError, LeaseLostError) as exc:
            self.stop.stop_now(str(exc))
            raise Abandoned() from exc
        with self._lock:
            self.run.metrics.count_round(played.record)

    def end(self, prompt_id: str, status: EpisodeStatus | None, failure: str | None = None) -> None:
        if status is None:
            return
        if failure is not None:
            try:
                self.run.store(f"failing episode of prompt {prompt_id[:12]}", lambda: self._fail(prompt_id, failure))
            except (StorageUnavailableError, LeaseLostError) as exc:
                self.stop.stop_now(str(exc))
                return
        with self._lock:
            self.run.metrics.count_episode(status)

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

    def _fail(self, prompt_id: str, reason: str) -> None:
        with session_scope(self.run.engine) as session:
            self.fence(session)
            rows.fail_episode(session, self.run.run_id, prompt_id, reason)


def schedule_episodes(
    player: DriverPlayer, in_flight_limit: int, progress: Callable[[RunMetrics], None] | None
) -> None:
    """Play the run's pending episodes with at most `in_flight_limit` (K) in flight, until all are played or a
    stop is requested; report progress every second and store it every 10 s."""
    run, stop = player.run, player.stop
    queue = iter(run.pending)
    in_flight: set[Future] = set()
    last_stored = time.perf_counter()
    with player.writer, ThreadPoolExecutor(in_flight_limit, thread_name_prefix="prefsmith-episode") as pool:
        # Backpressure: never more than K episodes submitted, however many prompts the run has.
        while True:
            while not stop.requested and len(in_flight) < in_flight_limit:
                item = next(queue, None)
                if item is None:
                    break
                in_flight.add(pool.submit(player.play, item, run.prompts[item.prompt_id]))
            if not in_flight:
                break
            done, in_flight = wait(in_flight, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
            if progress is not None:
                progress(run.metrics)
            if time.perf_counter() - last_stored > STORE_PROGRESS_S and not stop.abandon.is_set():
                try:
                    store_progress(run, player.book)
                except (StorageUnavailableError, LeaseLostError) as exc:
                    stop.stop_now(str(exc))
                last_stored = time.perf_counter()


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
        player = DriverPlayer(run, config, engines, tools, book, stop)
        run.metrics.nodes["episodes"] = [ray.get_runtime_context().get_node_id()]
        schedule_episodes(player, episode_slots(config), progress)
    finally:
        shut_down(engines).into(run.report)
