"""Storage on SQLite and PostgreSQL: migrations from empty, ORM/migration agreement, idempotent writes."""

from __future__ import annotations

import dataclasses

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select

from configs.errors import StorageError
from storage.db import create_db_engine, redact_url, resolve_db_url, session_scope
from storage.migrate import current_revision, head_revision, open_database, upgrade
from storage.models import Base, Episode, Generation, Judgment, PreferencePair, Prompt, Round, ToolEvidence
from storage.queries import run_summary
from storage.records import add_prompt_version, add_prompts, ensure_episodes, ensure_run, store_round
from tests.sample_run import sample_prompt, sample_round, store_sample_run


def _counts(engine) -> dict[str, int]:  # noqa: ANN001
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
    assert statuses == {"accepted", "failed"}, "a replayed round must not reopen a finished episode"
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
            store_round(session, "atomic", prompt_id, broken, final_status="accepted")
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


def test_prompt_versions_append_and_dedupe(db_url: str) -> None:
    engine = open_database(db_url)
    with session_scope(engine) as session:
        ensure_run(session, "pv", "a" * 64, {})
        assert add_prompt_version(session, "pv", "target", "v0") == 0
        assert add_prompt_version(session, "pv", "target", "v0") == 0
        assert add_prompt_version(session, "pv", "target", "v1", parent_version=0, critique="be exact") == 1
        assert add_prompt_version(session, "pv", "judge", "j0") == 0
    engine.dispose()


def test_credentials_never_shown() -> None:
    url = "postgresql://alice:s3cr%40t@db.example:5432/prefsmith"
    assert "s3cr" not in redact_url(url)
    assert resolve_db_url(url).startswith("postgresql+psycopg://")
    with pytest.raises(StorageError) as err:
        create_db_engine("postgresql://alice:s3cret@127.0.0.1:1/prefsmith")
    assert "s3cret" not in str(err.value) and "alice:***@127.0.0.1:1" in str(err.value)


def test_missing_sqlite_folder_is_an_error_not_a_mkdir(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(StorageError, match="does not exist"):
        create_db_engine(f"sqlite:///{tmp_path}/no/such/dir/x.db")
    assert not (tmp_path / "no").exists()


def test_sqlite_uses_wal_and_busy_timeout(tmp_path) -> None:  # noqa: ANN001
    engine = create_db_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
