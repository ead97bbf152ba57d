"""Storage on SQLite and PostgreSQL: migrations from empty, ORM/migration agreement, idempotent writes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select

from configs.errors import StorageError
from storage.db import create_db_engine, redact_url, resolve_db_url, session_scope
from storage.migrate import alembic_config, current_revision, head_revision, open_database, upgrade
from storage.models import Base, Episode, Generation, Judgment, PreferencePair, Prompt, Round, Run, ToolEvidence
from storage.queries import run_summary
from storage.records import (
    PromptVersionRecord,
    add_prompts,
    current_prompt_versions,
    ensure_episodes,
    ensure_run,
    load_prompt_versions,
    store_prompt_versions,
    store_round,
    update_run,
    utcnow,
)
from storage.vocabulary import EpisodeStatus
from tests.sample_run import sample_prompt, sample_round, store_sample_run


def _counts(engine) -> dict[str, int]:
    with session_scope(engine) as session:
        return {
            model.__tablename__: session.execute(select(func.count()).select_from(model)).scalar_one()
            for model in (Prompt, Episode, Round, Generation, Judgment, ToolEvidence, PreferencePair)
        }


def test_upgrade_empty_database_then_metadata_matches(empty_db_url: str) -> None:
    engine = create_db_engine(empty_db_url)
    assert current_revision(engine) is None
    assert upgrade(empty_db_url) == head_revision()
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"ORM models and migrations disagree: {diff}"
    assert upgrade(empty_db_url) == head_revision()  # a second upgrade is a no-op
    engine.dispose()


def _migrate(url: str, step: Callable[[Config, str], None], revision: str) -> None:
    engine = create_db_engine(url)
    config = alembic_config(url)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        step(config, revision)
    engine.dispose()


def test_migration_0003_moves_prompt_versions_to_columns_and_says_gave_up(empty_db_url: str) -> None:
    _migrate(empty_db_url, command.upgrade, "0002")
    engine = create_db_engine(empty_db_url)
    old_metrics = {"accepted": 3, "current_prompt_versions": {"target": 2, "judge": 1}}
    with engine.begin() as conn:
        now = utcnow()
        conn.execute(sa.insert(Prompt.__table__).values(id="p", messages=[], source="", meta={}, created_at=now))
        conn.execute(
            sa.table("runs", *(sa.column(c) for c in ("id", "config_hash", "status", "created_at", "updated_at")),
                     sa.column("config", sa.JSON()), sa.column("metrics", sa.JSON())).insert().values(
                id="old", config_hash="a" * 64, config={}, status="completed", metrics=old_metrics,
                created_at=now, updated_at=now)
        )
        episodes = sa.table("episodes", *(sa.column(c) for c in ("id", "run_id", "prompt_id", "status",
                                                                 "rounds_played", "created_at")))
        conn.execute(episodes.insert().values(id="e1", run_id="old", prompt_id="p", status="rejected",
                                              rounds_played=3, created_at=now))
    engine.dispose()

    upgrade(empty_db_url)
    engine = open_database(empty_db_url)
    with session_scope(engine) as session:
        assert current_prompt_versions(session, "old") == {"target": 2, "judge": 1}
        assert session.get(Run, "old").metrics == {"accepted": 3}
        assert session.get(Episode, "e1").status == EpisodeStatus.GAVE_UP
    engine.dispose()

    _migrate(empty_db_url, command.downgrade, "0002")
    engine = create_db_engine(empty_db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM episodes")).scalar_one() == "rejected"
        metrics = conn.execute(sa.select(sa.column("metrics", sa.JSON())).select_from(sa.table("runs"))).scalar_one()
    assert metrics == old_metrics
    engine.dispose()


def test_current_prompt_versions_are_columns_of_the_run(db_url: str) -> None:
    engine = open_database(db_url)
    with session_scope(engine) as session:
        ensure_run(session, "cur", "c" * 64, {})
        assert current_prompt_versions(session, "cur") == {"target": 0, "judge": 0}
        update_run(session, "cur", metrics={"rounds": 4}, current_prompt_versions={"target": 3, "judge": 1})
    with session_scope(engine) as session:
        summary = run_summary(session, "cur")
    assert summary.current_prompt_versions == {"target": 3, "judge": 1} and summary.metrics == {"rounds": 4}
    engine.dispose()


def test_unmigrated_database_is_refused(empty_db_url: str) -> None:
    with pytest.raises(StorageError, match="has no prefsmith schema; run `prefsmith db upgrade"):
        open_database(empty_db_url)


def test_sample_run_counts(db_url: str) -> None:
    engine = open_database(db_url)
    sample = store_sample_run(engine, "counts", n_prompts=5)
    with session_scope(engine) as session:
        summary = run_summary(session, "counts")
    assert (summary.prompts, summary.episodes, summary.episodes_done) == (5, 5, 5)
    assert (summary.rounds, summary.pairs) == (sample.rounds, sample.pairs) == (8, 8)
    assert summary.accepted_pairs == sample.accepted == 4
    assert summary.failures == sample.failed == 1
    engine.dispose()


def test_replaying_rounds_and_prompts_stores_them_once(db_url: str) -> None:
    engine = open_database(db_url)
    store_sample_run(engine, "replay", n_prompts=4)
    before = _counts(engine)
    with session_scope(engine) as session:
        ensure_run(session, "replay", "f" * 64, {"note": "sample"})
        prompt_ids = add_prompts(session, [sample_prompt(i) for i in range(4)])
        ensure_episodes(session, "replay", prompt_ids)
        for i, prompt_id in enumerate(prompt_ids):
            store_round(session, "replay", prompt_id, sample_round(i, 0, 9.0))
    assert _counts(engine) == before
    with session_scope(engine) as session:
        statuses = set(session.execute(select(Episode.status).where(Episode.run_id == "replay")).scalars())
    assert statuses == {EpisodeStatus.ACCEPTED, EpisodeStatus.FAILED}, "a replay must not reopen a finished episode"
    engine.dispose()


def test_round_is_atomic_when_a_write_fails(db_url: str) -> None:
    engine = open_database(db_url)
    with session_scope(engine) as session:
        ensure_run(session, "atomic", "a" * 64, {})
        (prompt_id,) = add_prompts(session, [sample_prompt(0)])
        ensure_episodes(session, "atomic", [prompt_id])
    broken = sample_round(0, 0, 9.0)
    broken = dataclasses.replace(broken, pair=dataclasses.replace(broken.pair, chosen_index=7))
    with pytest.raises(StorageError, match="names a candidate that does not exist"):
        with session_scope(engine) as session:
            store_round(session, "atomic", prompt_id, broken, final_status=EpisodeStatus.ACCEPTED)
    counts = _counts(engine)
    assert counts["rounds"] == counts["generations"] == counts["preference_pairs"] == 0
    engine.dispose()


def test_same_run_name_with_other_config_is_refused(db_url: str) -> None:
    engine = open_database(db_url)
    with session_scope(engine) as session:
        ensure_run(session, "r", "a" * 64, {})
    with pytest.raises(StorageError, match="already exists with config hash aaaaaaaaaaaa"):
        with session_scope(engine) as session:
            ensure_run(session, "r", "b" * 64, {})
    engine.dispose()


def test_prompt_versions_are_stored_once_as_numbered(db_url: str) -> None:
    engine = open_database(db_url)
    with session_scope(engine) as session:
        ensure_run(session, "pv", "a" * 64, {})
        first = [PromptVersionRecord("target", 0, "v0"), PromptVersionRecord("target", 1, "v1", 0, "be exact")]
        store_prompt_versions(session, "pv", first)
        store_prompt_versions(session, "pv", [PromptVersionRecord("target", 1, "a rival"),
                                              PromptVersionRecord("judge", 0, "j0")])
    with session_scope(engine) as session:
        assert load_prompt_versions(session, "pv") == [PromptVersionRecord("judge", 0, "j0"), *first]
    engine.dispose()


def test_credentials_never_shown() -> None:
    url = "postgresql://alice:s3cr%40t@db.example:5432/prefsmith"
    assert "s3cr" not in redact_url(url)
    assert resolve_db_url(url).startswith("postgresql+psycopg://")
    with pytest.raises(StorageError) as err:
        create_db_engine("postgresql://alice:s3cret@127.0.0.1:1/prefsmith")
    assert "s3cret" not in str(err.value) and "alice:***@127.0.0.1:1" in str(err.value)


def test_missing_sqlite_folder_is_an_error_not_a_mkdir(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        create_db_engine(f"sqlite:///{tmp_path}/no/such/dir/x.db")
    assert not (tmp_path / "no").exists()


def test_sqlite_uses_wal_and_busy_timeout(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
