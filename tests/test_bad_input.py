"""Bad input corpus: every malformed prompt file, unsafe name and out-of-range setting is one typed error that
names the file, line or field, before anything is stored; the rows already in the database are untouched.

Runs on SQLite and PostgreSQL (the `db_url` fixture): text one of them stores and the other refuses (NUL,
NaN) is refused the same way on both.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel
from sqlalchemy import Engine, func, select

from configs.errors import PrefsmithError
from configs.loading import load_config
from configs.schema import SynthesisConfig
from pipelines.synthesis.service import synthesize
from storage.migrate import open_database
from storage.models import Base
from tests.sample_run import store_sample_run

BadFile = Callable[[Path], Path]


def _write(name: str, data: bytes) -> BadFile:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return make


PROMPT_FILES: dict[str, tuple[BadFile, str]] = {
    "not UTF-8": (_write("p.jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n'), "p.jsonl:2: not UTF-8 text"),
    "not UTF-8 CSV": (_write("p.csv", b"prompt\nfine\n\xff\xfe\n"), "p.csv:3: not UTF-8 text"),
    "empty JSONL": (_write("p.jsonl", b""), "p.jsonl: no prompts in the file"),
    "blank lines only": (_write("p.jsonl", b"\n\n  \n"), "p.jsonl: no prompts in the file"),
    "header-only CSV": (_write("p.csv", b"prompt,answer\n"), "p.csv: no prompts in the file"),
    "CSV field over the csv limit": (
        _write("p.csv", b'prompt\n"' + b"x" * 200_000 + b'"\n'), "p.csv:2: unreadable CSV (field larger than"
    ),
    "5,000-digit JSON integer": (
        _write("p.jsonl", b'{"prompt": "p", "answer": ' + b"9" * 5000 + b"}\n"), "p.jsonl:1: invalid JSON"
    ),
    "truncated JSON": (_write("p.jsonl", b'{"prompt": "a"}\n{"prompt": \n'), "p.jsonl:2: invalid JSON"),
    "NUL in a prompt": (_write("p.jsonl", b'{"prompt": "a\\u0000b"}\n'), "p.jsonl:1: field 'prompt' contains a NUL"),
    "NUL in a CSV column": (_write("p.csv", b"prompt,answer\nq,4\x002\n"), "p.csv:2"),
    "NaN in a column": (_write("p.jsonl", b'{"prompt": "q", "answer": NaN}\n'), "field 'answer' is nan"),
    "Infinity nested": (
        _write("p.jsonl", b'{"prompt": "q", "meta": {"w": [1, Infinity]}}\n'), "field 'meta.w[1]' is inf"
    ),
    "no prompt field": (_write("p.jsonl", b'{"question": "q"}\n'), "p.jsonl:1: no prompt"),
    "not a JSON object": (_write("p.jsonl", b'["q"]\n'), "p.jsonl:1: expected a JSON object"),
    "missing file": (lambda folder: folder / "absent.jsonl", "absent.jsonl: prompt file not found"),
    "unsupported suffix": (_write("p.txt", b"q\n"), "p.txt: unsupported prompt file"),
}

SETTINGS: dict[str, tuple[list[str], str]] = {
    "sandbox timeout over the tool's limit": (
        ["tools.enabled=[python_sandbox]", "tools.sandbox_timeout_s=600"], "tools.sandbox_timeout_s"
    ),
    "sandbox memory under the tool's limit": (["tools.sandbox_memory_mb=1"], "tools.sandbox_memory_mb"),
    "labor table that is not a file": (
        ["tools.enabled=[labor_statistics]", "tools.labor_table=/nonexistent/table.csv"], "tools.labor_table"
    ),
    "unknown tool": (["tools.enabled=[web_search]"], "unknown tool 'web_search'"),
    "candidates below two": (["game.candidates=1"], "game.candidates"),
    "temperature out of range": (["sampling.temperature=-1"], "sampling.temperature"),
    "unknown role model": (["roles.judge=nope"], "nope"),
    "unknown built-in set": (["prompts=[{builtin: poems}]"], "unknown built-in set 'poems'"),
    "both builtin and path": (["prompts=[{builtin: arithmetic, path: x.jsonl}]"], "exactly one of"),
    "unknown key": (["game.max_roundz=3"], "game.max_roundz"),
    "tool call bound under the sandbox's": (
        ["tools.sandbox_timeout_s=30", "tools.call_timeout_s=10"], "tools.call_timeout_s (10) must exceed"
    ),
    "lease shorter than its renewal can keep": (["storage.lease_ttl_s=1"], "storage.lease_ttl_s"),
    "no storage retry time": (["storage.retry_s=0"], "storage.retry_s"),
    "negative engine restarts": (["ray.engine_restarts=-1"], "ray.engine_restarts"),
}


def _counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table.name: connection.execute(select(func.count()).select_from(table)).scalar_one()
            for table in Base.metadata.sorted_tables
        }


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stored(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A database of each kind holding an earlier run, shared by the module's cases: each case checks that it
    wrote nothing, so the next case starts from the same rows."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from storage.migrate import upgrade

    admin, name = None, f"prefsmith_bad_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('bad') / 'prefsmith.db'}"
    else:
        server = request.getfixturevalue("postgres_server_url")
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(server).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    engine = open_database(url)
    store_sample_run(engine, "earlier", n_prompts=3)
    yield engine, url
    engine.dispose()
    if admin is not None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _synthesize_with(overrides: list[str], db_url: str, run_name: str = "bad-input") -> None:
    config = load_config("quickstart", overrides)
    synthesize(config, run_id=run_name, db_url=db_url)


@pytest.mark.parametrize("case", list(PROMPT_FILES))
def test_bad_prompt_file_is_one_error_and_stores_nothing(case: str, stored, tmp_path: Path) -> None:
    engine, db_url = stored
    make, fragment = PROMPT_FILES[case]
    path = make(tmp_path)
    before = _counts(engine)
    with pytest.raises(PrefsmithError) as raised:
        _synthesize_with([f"prompts=[{{path: '{path}'}}]"], db_url)
    message = str(raised.value)
    assert fragment in message and "\n" not in message, message
    assert _counts(engine) == before


@pytest.mark.parametrize("case", list(SETTINGS))
def test_each_wrong_setting_is_one_error_and_stores_nothing(case: str, stored) -> None:
    engine, db_url = stored
    overrides, fragment = SETTINGS[case]
    before = _counts(engine)
    with pytest.raises(PrefsmithError) as raised:
        _synthesize_with(overrides, db_url)
    message = str(raised.value)
    assert fragment in message and "\n" not in message, message
    assert _counts(engine) == before


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden"])
def test_unsafe_run_name_stores_nothing(name: str, stored) -> None:
    engine, db_url = stored
    before = _counts(engine)
    with pytest.raises(PrefsmithError, match="--run-name"):
        _synthesize_with([], db_url, run_name=name)
    assert _counts(engine) == before


def _leaf_fields(model: type[BaseModel], prefix: str) -> list[tuple[str, Any]]:
    """(dotted path, annotation) of every setting under `model`; a model's entry in `models` stands for all."""
    leaves: list[tuple[str, Any]] = []
    for name, field in model.model_fields.items():
        path, annotation = f"{prefix}{name}", field.annotation
        args = [a for a in get_args(annotation) if a is not type(None)]
        nested = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if nested is not None:
            leaves += _leaf_fields(nested, f"{path}.")
        elif get_origin(annotation) is dict and args and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
            leaves += _leaf_fields(args[-1], f"{path}.default.")
        elif get_origin(annotation) is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            leaves.append((path, annotation))  # set as a whole (prompts=[...])
        else:
            leaves.append((path, annotation))
    return leaves


SYNTHESIS_FIELDS = _leaf_fields(SynthesisConfig, "")


def test_every_synthesis_setting_given_a_wrong_value_is_one_error_naming_it(stored) -> None:
    engine, db_url = stored
    before = _counts(engine)
    unnamed = []
    for path, annotation in SYNTHESIS_FIELDS:
        wrong = "lots" if get_origin(annotation) is dict else "{wrong: [1, 2]}"
        with pytest.raises(PrefsmithError) as raised:
            _synthesize_with([f"{path}={wrong}"], db_url)
        message = str(raised.value)
        if path not in message or "\n" in message:
            unnamed.append((path, message))
    assert not unnamed, unnamed
    assert len(SYNTHESIS_FIELDS) > 40, "the walk missed the schema"
    assert _counts(engine) == before
