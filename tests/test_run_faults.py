"""Faults a run must survive, below Ray and the model: the run lease (one synthesizer per run, takeover of a
dead one, fenced writes), database writes retried through dropped PostgreSQL connections, and an episode
resumed mid-way through storage continuing exactly as if it had never stopped. SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.exc import IntegrityError

from agents.game import EpisodePrompt
from configs.errors import StorageError
from pipelines.episode import PromptBook, play_episode
from pipelines.recording import store_played_round
from pipelines.synthesis.run import restore_book
from storage import leases
from storage import records as rows
from storage.db import session_scope
from storage.migrate import open_database
from storage.models import Episode, PromptVersion, Round, RunLease
from storage.records import PromptRecord
from storage.retries import StorageUnavailableError, with_retries
from tests.test_episode import (
    PROMPT,
    SETTINGS,
    ScriptedJudge,
    ScriptedOptimizer,
    ScriptedReward,
    ScriptedTarget,
    book,
    players,
)

MODEL_IDS = {"target": "t", "judge": "j", "reward": "r"}
STORED = EpisodePrompt(PromptRecord(PROMPT.messages).id, PROMPT.messages, PROMPT.meta)  # ids as storage makes them


def _run_with_episode(url: str, run_id: str = "r1"):
    engine = open_database(url)
    with session_scope(engine) as session:
        rows.ensure_run(session, run_id, "h" * 64, {})
        rows.add_prompts(session, [PromptRecord(PROMPT.messages)])
        rows.ensure_episodes(session, run_id, [STORED.id])
    return engine


def test_a_second_synthesizer_is_refused_by_name_and_takes_over_an_expired_lease(db_url: str) -> None:
    engine = _run_with_episode(db_url)
    first = leases.acquire(engine, "r1", ttl_s=30)
    with pytest.raises(leases.RunLeaseHeldError, match=r"run 'r1' is being played by \S+ \(pid \d+\)"):
        leases.acquire(engine, "r1", ttl_s=30)
    with session_scope(engine) as session:  # the holder stops renewing: its lease runs out
        session.execute(update(RunLease).values(expires_at=leases.database_now(session) - timedelta(seconds=1)))
    second = leases.acquire(engine, "r1", ttl_s=30)
    assert second.lease_id != first.lease_id and second.took_over_from == first.holder
    with pytest.raises(leases.LeaseLostError, match="was taken over"), session_scope(engine) as session:
        leases.renew(session, first)
    leases.release(engine, first)  # the old holder's release leaves the new lease alone
    with session_scope(engine) as session:
        assert session.get(RunLease, "r1").lease_id == second.lease_id
        leases.renew(session, second)
    leases.release(engine, second)
    with session_scope(engine) as session:
        assert session.get(RunLease, "r1") is None
    engine.dispose()


def test_a_dead_holder_on_this_machine_is_taken_over_at_once(db_url: str) -> None:
    engine = _run_with_episode(db_url)
    script = (
        "import sys; from storage.migrate import open_database; from storage import leases;"
        f"leases.acquire(open_database({db_url!r}), 'r1', ttl_s=600); print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(leases.RunLeaseHeldError, match=f"pid {holder.pid}"):
            leases.acquire(engine, "r1", ttl_s=600)
    finally:
        holder.kill()
        holder.wait()
    taken = leases.acquire(engine, "r1", ttl_s=600)  # 600 s left on its lease, but its process is gone
    assert taken.took_over_from is not None and f"pid {holder.pid} " in taken.took_over_from
    engine.dispose()


def test_a_synthesizer_that_was_taken_over_stores_nothing_more(db_url: str) -> None:
    engine = _run_with_episode(db_url)
    stale = leases.acquire(engine, "r1", ttl_s=30)
    with session_scope(engine) as session:
        session.execute(update(RunLease).values(expires_at=leases.database_now(session) - timedelta(seconds=1)))
    leases.acquire(engine, "r1", ttl_s=30)
    shared = book()
    episode = play_episode(
        STORED, players(ScriptedTarget([["4", "5"]]), ScriptedJudge([[9, 3]]), ScriptedReward([9])), shared, SETTINGS
    )
    with pytest.raises(leases.LeaseLostError):
        store_played_round(engine, "r1", episode, episode.rounds[0], MODEL_IDS, fence=lambda s: leases.renew(s, stale))
    with session_scope(engine) as session:
        assert session.execute(select(func.count()).select_from(Round)).scalar_one() == 0
        assert session.execute(select(func.count()).select_from(PromptVersion)).scalar_one() == 0
    engine.dispose()


def _play_interrupted(url: str) -> tuple[list, list]:
    """Play an episode whose first round is rejected (rewrites proposed), store that round, stop; then resume
    it as a rerun would: from storage only. Returns the rounds of the resumed and of an uninterrupted play."""
    script = dict(target=[["4", "5"], ["4", "22"]], judge=[[8, 4], [9, 1]], reward=[5, 9])

    def fresh_players():
        return players(
            ScriptedTarget(list(script["target"])),
            ScriptedJudge(list(script["judge"])),
            ScriptedReward(list(script["reward"])),
            ScriptedOptimizer(),
        )

    whole = play_episode(STORED, fresh_players(), book(), SETTINGS)

    engine = _run_with_episode(url)

    class Killed(Exception):
        pass

    def store_then_die(episode, record):
        store_played_round(engine, "r1", episode, record, MODEL_IDS)
        raise Killed()

    with pytest.raises(Killed):
        play_episode(STORED, fresh_players(), book(), SETTINGS, on_round=store_then_die)

    # the rerun: the run's book and where the episode stood come from the database
    restored = restore_book(engine, "r1")
    with session_scope(engine) as session:
        ((prompt_id, played),) = rows.pending_episodes(session, "r1")
        resume = rows.resume_prompt_versions(session, "r1")[prompt_id]
    assert played == 1 and resume == {"target": 1, "judge": 1}, "the rewrite round 0 proposed is what comes next"
    resumed_players = fresh_players()
    resumed_players.target.seen.append(("(round 0 already played)", 0))  # scripts continue at round 1
    resumed_players.judge.seen_prompts.append("(round 0)")
    resumed_players.reward.calls = 1
    resumed_players.optimizer.seen.append({})
    rest = play_episode(
        STORED,
        resumed_players,
        restored,
        SETTINGS,
        first_round=1,
        prompts=(restored.get("target", resume["target"]), restored.get("judge", resume["judge"])),
        on_round=lambda episode, record: store_played_round(engine, "r1", episode, record, MODEL_IDS),
    )
    with session_scope(engine) as session:
        status = session.execute(select(Episode.status)).scalar_one()
        current = rows.current_prompt_versions(session, "r1")
    engine.dispose()
    assert status == "accepted" and current == {"target": 1, "judge": 1}, "the promotion was stored with the round"
    return rest.rounds, whole.rounds[1:]


def test_an_episode_resumed_from_storage_plays_its_pending_rewrite(db_url: str) -> None:
    resumed, uninterrupted = _play_interrupted(db_url)
    assert [(r.index, r.outcome, r.target_prompt.text, r.judge_prompt.text, r.seed) for r in resumed] == [
        (r.index, r.outcome, r.target_prompt.text, r.judge_prompt.text, r.seed) for r in uninterrupted
    ]
    assert resumed[0].target_prompt.text == "target prompt v1 be exact"


def test_a_restored_book_numbers_new_rewrites_after_every_stored_one(db_url: str) -> None:
    engine = _run_with_episode(db_url)
    shared = book()
    episode = play_episode(
        STORED,
        players(ScriptedTarget([["4", "5"], ["4", "5"]]), ScriptedJudge([[8, 4], [8, 4]]), ScriptedReward([5, 5])),
        shared,
        SETTINGS.__class__(candidates=2, max_rounds=2, accept_threshold=8, seed=7),
    )
    store_played_round(engine, "r1", episode, episode.rounds[0], MODEL_IDS)
    restored: PromptBook = restore_book(engine, "r1")
    engine.dispose()
    assert [v.version for v in restored.versions() if v.role == "target"] == [0, 1]
    assert restored.propose(restored.current()[0], "x", "y").version == 2


def _terminate_other_backends(admin_url: str, database: str) -> int:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :db AND pid <> pg_backend_pid()"
            ),
            {"db": database},
        ).scalar_one()
    admin.dispose()
    return int(killed)


@pytest.mark.postgres
def test_writes_are_retried_through_terminated_postgresql_connections(
    fresh_postgres_url: str, postgres_server_url: str
) -> None:
    from sqlalchemy.engine import make_url

    engine = open_database(fresh_postgres_url, migrate=True)
    database = make_url(fresh_postgres_url).database
    with session_scope(engine) as session:  # a pooled connection, idle, like a synthesizer's between rounds
        rows.ensure_run(session, "r1", "h" * 64, {})
    attempts: list[str] = []

    def write() -> None:
        with session_scope(engine) as session:
            session.execute(select(1))
            if len(attempts) < 2:  # the server drops the connection in the middle of the transaction
                attempts.append("killed")
                assert _terminate_other_backends(postgres_server_url, database) >= 1
            rows.update_run(session, "r1", metrics={"written": True})

    retried: list[str] = []
    with_retries(write, "storing the test row", budget_s=30, on_retry=retried.append)
    assert len(retried) == 2 and all("storing the test row failed" in line for line in retried)
    with session_scope(engine) as session:
        assert session.execute(text("SELECT metrics FROM runs")).scalar_one() == {"written": True}
    engine.dispose()


@pytest.mark.postgres
def test_a_database_that_stays_away_ends_in_one_clear_error(fresh_postgres_url: str, postgres_server_url: str) -> None:
    from sqlalchemy.engine import make_url

    engine = open_database(fresh_postgres_url, migrate=True)
    database = make_url(fresh_postgres_url).database

    def write() -> None:
        with session_scope(engine) as session:
            session.execute(select(1))
            _terminate_other_backends(postgres_server_url, database)
            session.execute(select(1))

    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match=r"storing: the database kept failing for 2 s \(\d+ attempts\)"):
        with_retries(write, "storing", budget_s=2, on_retry=lambda _: None)
    assert time.monotonic() - started < 15
    engine.dispose()


def test_errors_that_will_not_pass_are_not_retried(db_url: str) -> None:
    engine = _run_with_episode(db_url)
    calls: list[int] = []

    def duplicate() -> None:  # two leases for one run: a constraint, which no retry can make pass
        calls.append(1)
        with session_scope(engine) as session:
            now = leases.database_now(session)
            for lease_id in ("a", "b"):
                session.add(RunLease(run_id="r1", lease_id=lease_id, holder="x", acquired_at=now, expires_at=now))
                session.flush()

    with pytest.raises(IntegrityError):
        with_retries(duplicate, "x", budget_s=30)
    assert calls == [1]

    def missing() -> None:
        calls.append(2)
        with session_scope(engine) as session:
            rows.current_prompt_versions(session, "no-such-run")

    with pytest.raises(StorageError, match="no run named"):
        with_retries(missing, "reading", budget_s=30)
    assert calls == [1, 2]
    engine.dispose()


def _round_writer_setup(url: str, n: int):
    """A run with an episode for each of `n` prompts, a lease on it, and one played round to store for each."""
    from pipelines.recording import RoundToStore

    engine = open_database(url)
    prompts = [PromptRecord([{"role": "user", "content": f"What is {i} + 2?"}]) for i in range(n)]
    with session_scope(engine) as session:
        rows.ensure_run(session, "r1", "h" * 64, {})
        rows.add_prompts(session, prompts)
        rows.ensure_episodes(session, "r1", [p.id for p in prompts])
    lease = leases.acquire(engine, "r1", ttl_s=30)
    played = play_episode(
        STORED,
        players(ScriptedTarget([["4", "5"]]), ScriptedJudge([[8, 4]]), ScriptedReward([9])),
        book(),
        SETTINGS,
    )
    items = [RoundToStore(p.id, played.rounds[0], played.status, played.reason) for p in prompts]
    return engine, lease, items


def _stored_rounds(engine) -> int:
    with session_scope(engine) as session:
        return session.execute(select(func.count()).select_from(Round)).scalar_one()


def test_rounds_finished_together_share_a_transaction_and_a_bad_one_fails_alone(db_url: str) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.recording import GroupCommit, store_rounds

    engine, lease, items = _round_writer_setup(db_url, 8)
    bad = dataclasses.replace(items[3], prompt_id="x" * 64)  # no episode of the run: cannot be stored
    items[3] = bad
    first_write_started, first_write_may_go = threading.Event(), threading.Event()
    batches: list[int] = []

    def write(rounds):
        if not first_write_started.is_set():
            first_write_started.set()
            first_write_may_go.wait(30)  # the rest queue up meanwhile
        batches.append(len(rounds))
        store_rounds(engine, "r1", rounds, MODEL_IDS, fence=lambda s: leases.renew(s, lease))

    outcomes: dict[str, str] = {}

    def store(item):
        try:
            writer.store(item)
            outcomes[item.prompt_id] = "stored"
        except StorageError as exc:
            outcomes[item.prompt_id] = str(exc)

    with GroupCommit(write, whole_batch=(StorageUnavailableError, leases.LeaseLostError)) as writer:
        with ThreadPoolExecutor(8) as pool:
            pool.submit(store, items[0])
            assert first_write_started.wait(30)  # the first round is being written...
            rest = [pool.submit(store, item) for item in items[1:]]
            while writer.backlog < 7:  # ...while the other seven wait for the writer
                time.sleep(0.01)
            first_write_may_go.set()
            for future in rest:
                future.result()
    stored = _stored_rounds(engine)
    engine.dispose()
    assert batches[:2] == [1, 7], "the seven rounds that arrived during the first write went in one transaction"
    assert batches[2:] == [1] * 7, "the failed batch was written again round by round"
    assert stored == 7
    assert outcomes.pop("x" * 64) == "episode of prompt xxxxxxxxxxxx is not part of run 'r1'"
    assert set(outcomes.values()) == {"stored"} and len(outcomes) == 7


def test_a_lost_lease_fails_every_round_of_the_batch_and_stores_none(db_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.recording import GroupCommit, store_rounds

    engine, lease, items = _round_writer_setup(db_url, 4)
    stale = dataclasses.replace(lease, lease_id="someone-else")
    writes = []

    def write(rounds):
        writes.append(len(rounds))
        store_rounds(engine, "r1", rounds, MODEL_IDS, fence=lambda s: leases.renew(s, stale))

    with GroupCommit(write, whole_batch=(StorageUnavailableError, leases.LeaseLostError)) as writer:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(writer.store, item) for item in items]
            errors = [type(f.exception(30)).__name__ for f in futures]
    stored = _stored_rounds(engine)
    engine.dispose()
    assert errors == ["LeaseLostError"] * 4
    assert sum(writes) == 4, "no round was retried on its own: the lease is the run's, not the round's"
    assert stored == 0
