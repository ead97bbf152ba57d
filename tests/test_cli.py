"""The `prefsmith` CLI as users run it (a subprocess): runs, export, config, quickstart, and bad input.

Every user error is one line on stderr, a non-zero exit, no traceback, and nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.migrate import head_revision, open_database
from tests.conftest import REPO
from tests.sample_run import store_sample_run


def prefsmith(*args: str, home: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if home is not None:
        env["PREFSMITH_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result  # every error a user can cause exits 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("prefsmith: error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def stored_db(db_url: str) -> str:
    engine = open_database(db_url)
    store_sample_run(engine, "cli-run", n_prompts=4)
    engine.dispose()
    return db_url


@pytest.mark.slow
def test_runs_list_and_show_json(stored_db: str) -> None:
    listed = prefsmith("runs", "list", "--json", "--db", stored_db)
    assert listed.returncode == 0, listed.stderr
    (run,) = json.loads(listed.stdout)
    assert run["id"] == "cli-run"
    shown = prefsmith("runs", "show", "cli-run", "--json", "--db", stored_db)
    summary = json.loads(shown.stdout)
    assert {k: summary[k] for k in ("prompts", "episodes", "rounds", "accepted_pairs", "failures")} == {
        "prompts": 4, "episodes": 4, "rounds": 6, "accepted_pairs": 3, "failures": 1,
    }
    assert summary["config_hash"] == "f" * 64
    # 3 accepted pairs, all correct over wrong; the 3 rejected ones too, so the grade agreed on 3 of 6
    assert summary["pair_quality"] == {"accepted": 3, "correct_over_wrong": 3, "share": 1.0,
                                       "reward_vs_verdicts": {"pairs": 6, "agree": 3, "rate": 0.5}}
    human = prefsmith("runs", "show", "cli-run", "--db", stored_db)
    assert "accepted_pairs" in human.stdout and "cli-run" in human.stdout
    assert "3 of 3 accepted (100%)" in human.stdout and "agreed on 3 of 6 graded pairs (50%)" in human.stdout


@pytest.mark.slow
def test_export_command_and_its_errors(stored_db: str, tmp_path: Path) -> None:
    out = tmp_path / "set"
    done = prefsmith("export", "--run", "cli-run", "--out", str(out), "--format", "jsonl", "--db", stored_db)
    assert done.returncode == 0, done.stderr
    assert "export cli-run@v1: 3 pairs" in done.stdout
    assert len((out / "data.jsonl").read_text().splitlines()) == 3

    assert_user_error(
        prefsmith("export", "--run", "cli-run", "--out", str(out), "--db", stored_db), "pass --force"
    )
    unknown = tmp_path / "unknown"
    assert_user_error(
        prefsmith("export", "--run", "ghost", "--out", str(unknown), "--db", stored_db), "no run named 'ghost'"
    )
    assert not unknown.exists()


def test_malformed_config_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling:\n  temperature: hot\n")
    assert_user_error(prefsmith("config", "show", "--config", str(bad)), str(bad), "sampling.temperature")


@pytest.mark.slow
def test_unreachable_database_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    assert_user_error(
        prefsmith("runs", "list", "--db", "postgresql://bob:hunter2@127.0.0.1:1/none"),
        "cannot connect to database", "bob:***@127.0.0.1:1",
    )
    assert_user_error(prefsmith("db", "upgrade", "--db", f"sqlite:///{tmp_path}/missing/x.db"), "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert_user_error(prefsmith("models", "prepare", "gpt-17", home=home), "unknown prefsmith model 'gpt-17'")
    assert not home.exists()


@pytest.mark.model
@pytest.mark.ray
def test_quickstart_synthesizes_and_exports(tmp_path: Path, small_model_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'qs.db'}"
    small = ["--set", "prompts=[{builtin: arithmetic, limit: 2}]", "--set", "game.max_rounds=1",
             "--set", "game.candidates=2", "--set", "sampling.max_tokens=16"]
    done = prefsmith("quickstart", "--db", db, *small, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"ready at {small_model_path}" in done.stdout
    assert f"schema revision {head_revision()}" in done.stdout
    assert "2/2 episodes played this time" in done.stdout and "[4/4] export run-" in done.stdout
    (run,) = json.loads(prefsmith("runs", "list", "--json", "--db", db).stdout)
    assert (run["prompts"], run["episodes_done"], run["rounds"], run["exports"]) == (2, 2, 2, 1)


@pytest.mark.model
@pytest.mark.ray
def test_refresh_plays_new_prompts_once_and_exports_them(tmp_path: Path, small_model_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'refresh.db'}"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "What is 2 + 3? Answer with the number.", "answer": 5,
                                   "expression": "2 + 3"}) + "\n")
    out = tmp_path / "set"
    refresh = ["refresh", "--db", db, "--set", f"prompts=[{{path: {prompts}}}]", "--set", "game.max_rounds=1",
               "--set", "game.candidates=2", "--set", "sampling.max_tokens=16"]
    first = prefsmith(*refresh, "--out", str(out), "--format", "jsonl", timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "1/1 episodes played this time" in first.stdout
    (run,) = json.loads(prefsmith("runs", "list", "--json", "--db", db).stdout)
    assert f"export {run['id']}@v1: {run['accepted_pairs']} pairs → {out.resolve()}" in first.stdout
    assert len((out / "data.jsonl").read_text().splitlines()) == run["accepted_pairs"]

    again = prefsmith(*refresh)
    assert again.returncode == 0, again.stderr
    assert "nothing to refresh: all 1 prompts were already played" in again.stdout
    (run,) = json.loads(prefsmith("runs", "list", "--json", "--db", db).stdout)
    assert run["exports"] == 1


def test_console_script_is_the_same_program() -> None:
    script = Path(sys.executable).with_name("prefsmith")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for command in ("quickstart", "export", "runs", "models", "db", "config"):
        assert command in done.stdout


@pytest.mark.slow
def test_unsafe_run_name_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    assert_user_error(
        prefsmith("synthesize", "--config", "quickstart", "--run-name", "../../etc", "--db", f"sqlite:///{db}"),
        "--run-name '../../etc'",
    )
    assert not db.exists()


def test_passwords_in_urls_are_never_shown(tmp_path: Path) -> None:
    url = "postgresql+psycopg://bob:hunter2@127.0.0.1:5432/test"
    shown = prefsmith("config", "show", "--set", f"storage.url={url}")
    assert shown.returncode == 0, shown.stderr
    assert "hunter2" not in shown.stdout and "bob:***@127.0.0.1:5432/test" in shown.stdout


def test_models_list_on_a_fresh_home_creates_no_database(tmp_path: Path) -> None:
    env_db = os.environ.pop("PREFSMITH_DB", None)
    try:
        listed = prefsmith("models", "list", home=tmp_path)
    finally:
        if env_db is not None:
            os.environ["PREFSMITH_DB"] = env_db
    assert listed.returncode == 0, listed.stderr
    assert "smollm2-135m-instruct" in listed.stdout and "not prepared" in listed.stdout
    assert not (tmp_path / "prefsmith.db").exists(), "listing models creates no database"
