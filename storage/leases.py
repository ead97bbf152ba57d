"""One live synthesizer per run: a lease row in the run's database, renewed while the run plays.

A second synthesizer of the same run is refused with the holder's name. A holder that stops renewing
(killed, its machine gone) loses the run when its lease expires; on the holder's own machine a dead holder
process is recognised at once. Every round is stored only if the lease is still the writer's own (a
fencing token checked in the same transaction), so a holder that was taken over cannot attach its rounds to
the new holder's.

Time comes from the database server on PostgreSQL (machines that share a run share its clock) and from this
machine on SQLite (an embedded database is used from one machine).
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.orm import Session

from configs.errors import StorageError
from storage.db import session_scope
from storage.models import RunLease
from storage.records import insert_ignore

_HOLDER = re.compile(r"^(?P<host>\S+) pid (?P<pid>\d+) start (?P<start>\d+) boot (?P<boot>\w+)$")


class RunLeaseHeldError(StorageError):
    """Another live synthesizer holds the run."""


class LeaseLostError(StorageError):
    """This synthesizer's lease was taken over (it stopped renewing for longer than the lease lasts)."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of process `pid` (clock ticks since boot): with the pid, names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:16]
    except OSError:
        return "unknown"


def this_holder() -> str:
    """How this process is named in a lease: host, pid, process start and boot, e.g. for `runs show`."""
    return f"{socket.gethostname()} pid {os.getpid()} start {_process_start(os.getpid()) or 0} boot {_boot_id()}"


def holder_is_dead(holder: str) -> bool:
    """True only when `holder` is a process of this machine (same boot) that no longer runs."""
    match = _HOLDER.match(holder)
    if match is None or match["boot"] != _boot_id() or match["boot"] == "unknown":
        return False
    return _process_start(int(match["pid"])) != match["start"]


def shown(holder: str) -> str:
    match = _HOLDER.match(holder)
    return f"{match['host']} (pid {match['pid']})" if match else holder


def database_now(session: Session) -> datetime:
    """Now, by the database server's clock on PostgreSQL and this machine's on SQLite, in UTC."""
    if session.get_bind().dialect.name == "postgresql":
        now = session.execute(text("SELECT now()")).scalar_one()
        return now.astimezone(UTC)
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)  # SQLite returns naive UTC


@dataclass(frozen=True)
class Lease:
    run_id: str
    lease_id: str
    holder: str
    ttl_s: float
    took_over_from: str | None = None  # the holder whose lease had expired (or who was dead), if any


def acquire(engine: Engine, run_id: str, ttl_s: float) -> Lease:
    """The run's lease for this process, or RunLeaseHeldError naming the live holder."""
    lease_id, holder = uuid.uuid4().hex, this_holder()
    for _ in range(3):  # lost races with other contenders are retried on what they left
        with session_scope(engine) as session:
            now = database_now(session)
            current = session.get(RunLease, run_id)
            if current is None:
                row = {
                    "run_id": run_id,
                    "lease_id": lease_id,
                    "holder": holder,
                    "acquired_at": now,
                    "expires_at": now + timedelta(seconds=ttl_s),
                }
                insert_ignore(session, RunLease, [row], ["run_id"])
                mine = session.execute(select(RunLease.lease_id).where(RunLease.run_id == run_id)).scalar_one()
                if mine == lease_id:
                    return Lease(run_id, lease_id, holder, ttl_s)
                continue
            expires, previous, previous_id = _aware(current.expires_at), current.holder, current.lease_id
            if expires > now and not holder_is_dead(previous):
                left = (expires - now).total_seconds()
                raise RunLeaseHeldError(
                    f"run {run_id!r} is being played by {shown(previous)} since "
                    f"{_aware(current.acquired_at):%Y-%m-%d %H:%M:%S} UTC; stop that synthesizer, or rerun once its "
                    f"lease expires ({left:.0f} s after its last renewal if it is gone)"
                )
            taken = session.execute(
                update(RunLease)
                .where(RunLease.run_id == run_id, RunLease.lease_id == previous_id)
                .values(lease_id=lease_id, holder=holder, acquired_at=now, expires_at=now + timedelta(seconds=ttl_s))
            )
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return Lease(run_id, lease_id, holder, ttl_s, took_over_from=previous)  # (current is updated in place)
    raise RunLeaseHeldError(f"run {run_id!r}: other synthesizers kept taking its lease; try again")


def renew(session: Session, lease: Lease) -> None:
    """Extend `lease` inside `session`'s transaction; LeaseLostError if it is no longer this holder's, so
    whatever else the transaction writes is rolled back with it."""
    now = database_now(session)
    renewed = session.execute(
        update(RunLease)
        .where(RunLease.run_id == lease.run_id, RunLease.lease_id == lease.lease_id)
        .values(expires_at=now + timedelta(seconds=lease.ttl_s))
    )
    if renewed.rowcount != 1:  # type: ignore[attr-defined]
        current = session.get(RunLease, lease.run_id)
        by = f" by {shown(current.holder)}" if current is not None else ""
        raise LeaseLostError(f"run {lease.run_id!r} was taken over{by}: this synthesizer stops")


def release(engine: Engine, lease: Lease) -> None:
    """Give the run up (the end of a synthesizer); a lease already taken over is left to its new holder."""
    with session_scope(engine) as session:
        session.execute(delete(RunLease).where(RunLease.run_id == lease.run_id, RunLease.lease_id == lease.lease_id))


def holder_of(session: Session, run_id: str) -> tuple[str, datetime] | None:
    """The run's live holder and its lease's expiry, or None (for `runs show`)."""
    current = session.get(RunLease, run_id)
    if current is None:
        return None
    expires = _aware(current.expires_at)
    if expires <= database_now(session) or holder_is_dead(current.holder):
        return None
    return shown(current.holder), expires
