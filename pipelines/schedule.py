"""`prefsmith schedule`: run a prefsmith command on a cron schedule, as a Ray job when given an address
(through Ray's job submission client) or as a local process otherwise; overlapping runs are refused.

Cron: five fields (minute hour day month weekday), or six with seconds first (`*/10 * * * * *`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from configs.errors import ConfigError, PrefsmithError
from configs.secrets import mask_secrets
from storage.folders import prefsmith_home


class ScheduleBusyError(PrefsmithError):
    """Another scheduler already runs this schedule."""


def next_fire_times(cron: str, start: datetime) -> Any:
    from croniter import croniter

    fields = cron.split()
    if len(fields) not in (5, 6) or not croniter.is_valid(cron, second_at_beginning=len(fields) == 6):
        raise ConfigError(f"--cron {cron!r}: not a cron expression (5 fields, or 6 with seconds first)")
    return croniter(cron, start, second_at_beginning=len(fields) == 6)


@dataclass
class ScheduledRun:
    started_at: datetime
    handle: Any  # subprocess.Popen, or a Ray job submission id
    kind: str

    def running(self, client: Any) -> bool:
        if self.kind == "local":
            return self.handle.poll() is None
        from ray.job_submission import JobStatus

        return client.get_job_status(self.handle) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}

    def outcome(self, client: Any) -> str:
        if self.kind == "local":
            return f"exit {self.handle.returncode}"
        return str(client.get_job_status(self.handle))


@dataclass
class ScheduleReport:
    fired: int = 0
    started: int = 0
    refused_overlap: int = 0
    outcomes: list[str] = field(default_factory=list)


def schedule_id(cron: str, command: list[str]) -> str:
    return hashlib.sha256(f"{cron}\x00{shlex.join(command)}".encode()).hexdigest()[:16]


def run_schedule(
    cron: str,
    command: list[str],
    *,
    address: str | None = None,
    max_fires: int | None = None,
    working_dir: str | None = None,
    log: Any = print,
) -> ScheduleReport:
    """Fire `prefsmith COMMAND` at each cron time until `max_fires` fires (forever if None).

    A fire while the previous run of this schedule is still going is refused and logged; a second scheduler
    of the same schedule (same cron and command) on this machine is refused at start.
    """
    if not command:
        raise ConfigError("schedule: give the prefsmith arguments to run after `--`")
    times = next_fire_times(cron, datetime.now())
    lock_dir = prefsmith_home() / "schedules"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock_path = lock_dir / f"{schedule_id(cron, command)}.lock"
    lock_file = lock_path.open("a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        owner = lock_file.read().strip() or "another process"
        lock_file.close()
        raise ScheduleBusyError(f"this schedule is already running ({owner}); refusing to run it twice") from None
    lock_file.truncate(0)
    lock_file.write(f"pid {os.getpid()}")
    lock_file.flush()

    client = None
    if address:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(address)
    report = ScheduleReport()
    current: ScheduledRun | None = None
    try:
        while max_fires is None or report.fired < max_fires:
            fire_at = times.get_next(datetime)
            time.sleep(max(0.0, (fire_at - datetime.now()).total_seconds()))
            report.fired += 1
            if current is not None and current.running(client):
                report.refused_overlap += 1
                since = f"{current.started_at:%H:%M:%S}"
                log(f"schedule: {fire_at:%H:%M:%S} refused: the run started {since} is still going")
                continue
            if current is not None:
                report.outcomes.append(current.outcome(client))
            current = _start(command, client, working_dir)
            report.started += 1
            log(f"schedule: {fire_at:%H:%M:%S} started prefsmith {mask_secrets(shlex.join(command))} ({current.kind})")
        if current is not None:
            while current.running(client):
                time.sleep(0.5)
            report.outcomes.append(current.outcome(client))
    finally:
        fcntl.flock(lock_file, fcntl.LOCK_UN)
        lock_file.close()
    return report


def _start(command: list[str], client: Any, working_dir: str | None) -> ScheduledRun:
    if client is None:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *command], cwd=working_dir)
        return ScheduledRun(datetime.now(), proc, "local")
    command, env_vars = _database_url_to_env(command)
    entrypoint = "python -m pipelines.cli " + shlex.join(command)
    runtime_env: dict[str, Any] = {"working_dir": str(Path(working_dir or ".").resolve())}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    return ScheduledRun(datetime.now(), job_id, "ray job")


def _database_url_to_env(command: list[str]) -> tuple[list[str], dict[str, str]]:
    """`command` without its `--db URL`, and that URL as PREFSMITH_DB for the job's environment: a job's
    entrypoint is shown by the Ray dashboard and its logs, so it must not carry a password."""
    kept: list[str] = []
    env: dict[str, str] = {}
    args = iter(command)
    for arg in args:
        if arg == "--db":
            env["PREFSMITH_DB"] = next(args, "")
        elif arg.startswith("--db="):
            env["PREFSMITH_DB"] = arg.removeprefix("--db=")
        else:
            kept.append(arg)
    return kept, env
