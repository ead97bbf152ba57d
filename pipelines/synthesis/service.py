"""`synthesize()`, what `prefsmith synthesize` (and `python -m pipelines.cli synthesize` under `ray job submit`)
runs: prepares the run, joins a cluster when given an address (or starts a local Ray), plays the pending
episodes as threads of the driver or on episode workers, and finishes the run."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import psutil
import ray

from agents.backends import BackendFactory, create_backend
from configs.schema import SynthesisConfig
from pipelines.episode import Book
from pipelines.synthesis.local import play_in_driver
from pipelines.synthesis.run import (
    LeaseKeeper,
    RunMetrics,
    StopRequest,
    SynthesisReport,
    default_run_id,
    finish,
    prepare_run,
    restore_book,
)
from pipelines.synthesis.workers import play_on_workers
from tools.registry import build_tools


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
        start_local_ray(config.ray.num_cpus)
    try:
        yield
    finally:
        ray.shutdown()


def start_local_ray(num_cpus: int | None, attempts: int = 3) -> None:
    """Start a local Ray for this driver. Ray gives a new node a fixed 30 s to register with its GCS; a host
    busy enough to miss that (a few cores under a model engine) gets the half-started node's processes stopped
    and the start tried again, up to `attempts` times, instead of a failed run."""
    driver = psutil.Process()
    for attempt in range(1, attempts + 1):
        before = {child.pid for child in driver.children(recursive=True)}
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, namespace="prefsmith", log_to_driver=False)
            return
        except Exception as error:
            if "timed out during startup" not in str(error) or attempt == attempts:
                raise
            started = [child for child in driver.children(recursive=True) if child.pid not in before]
            for child in started:
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(started, timeout=10)
            ray.shutdown()
            print(
                f"prefsmith: Ray's local node did not start within Ray's 30 s (a busy host?); "
                f"starting it again ({attempt + 1}/{attempts})",
                file=sys.stderr,
                flush=True,
            )


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
