"""`prefsmith runs audit`: a run's accepted pairs re-checked with today's verifiers, on SQLite and PostgreSQL.

Stored pairs whose verdicts were recorded as verified are checked again by the real tools (reference answers,
the sandbox on HumanEval-format tests): one pair's chosen answer is wrong by today's checks and must be listed
with the check it fails; nothing is written unless `--record` says so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, text

from configs.errors import ConfigError, NotFoundError
from configs.schema import PromptSourceConfig, SynthesisConfig, ToolsConfig
from pipelines.audit import audit_run
from pipelines.prompt_sources import load_prompts
from storage.db import session_scope
from storage.migrate import open_database
from storage.queries import get_run
from storage.records import (
    JudgmentRecord,
    PairRecord,
    PromptRecord,
    RoundRecord,
    add_prompts,
    ensure_episodes,
    ensure_run,
    episode_id_for,
    pair_id_for,
    store_round,
)
from storage.vocabulary import AcceptedBy, Candidate, EpisodeStatus, RoundOutcome
from tests.conftest import REPO
from tests.sample_run import MODEL, store_sample_run
from tests.test_cli import assert_user_error, prefsmith
from tools.base import JudgeTool, PromptContext

FIXTURE = REPO / "tests" / "data" / "humaneval_format.jsonl"


class BrokenTool(JudgeTool):
    """A plug-in that applies to every answer and fails every call."""

    name: str = "broken"
    description: str = "Fails."

    def arguments_for(self, prompt: PromptContext, candidate: str | None) -> dict[str, Any] | None:
        return {"candidate": candidate}

    def _run(self, candidate: str | None = None) -> dict[str, Any]:
        raise RuntimeError("the checker is down")


def store_pair(engine: Engine, run_id: str, prompt: PromptRecord, chosen: str, rejected: str) -> str:
    """An accepted pair whose stored verdicts say chosen passed and rejected failed, as a judge recorded them."""
    with session_scope(engine) as session:
        (prompt_id,) = add_prompts(session, [prompt])
        ensure_episodes(session, run_id, [prompt_id])
    record = RoundRecord(
        index=0, target_prompt_version=0, judge_prompt_version=0, outcome=RoundOutcome.ACCEPTED,
        candidates=[Candidate(text=chosen, model_id=MODEL, finish_reason="stop", completion_tokens=9),
                    Candidate(text=rejected, model_id=MODEL, finish_reason="stop", completion_tokens=9)],
        judgments=[JudgmentRecord(0, None, "", MODEL, verified=True),
                   JudgmentRecord(1, None, "", MODEL, verified=False)],
        pair=PairRecord(0, 1, None, None, None, "", True, MODEL, MODEL, MODEL, accepted_by=AcceptedBy.VERIFIED),
    )
    with session_scope(engine) as session:
        store_round(session, run_id, prompt_id, record, final_status=EpisodeStatus.ACCEPTED)
    return pair_id_for(episode_id_for(run_id, prompt_id), 0)


@dataclass(frozen=True)
class Stored:
    engine: Engine
    url: str
    wrong_sum: str  # the arithmetic pair whose chosen answer is wrong
    wrong_code: str  # the code pair whose chosen answer fails its tests
    humaneval: str  # a HumanEval-format pair that is still verified


@pytest.fixture
def stored(db_url: str) -> Iterator[Stored]:
    """Run `sample` (default tools: reference_answer, calculator): the five verified pairs of tests/sample_run.py,
    one whose chosen answer is wrong, one no tool judges. Run `code` (python_sandbox): a HumanEval-format prompt
    of tests/data with its canonical solution over `return None`, and a function whose chosen version is wrong."""
    engine = open_database(db_url)
    store_sample_run(engine, "sample", n_prompts=6)
    sum_prompt = PromptRecord([{"role": "user", "content": "What is 7 + 8?"}], "test:arithmetic", {"answer": 15})
    wrong_sum = store_pair(engine, "sample", sum_prompt, "7 + 8 = 16, so the answer is 16.", "The answer is 15.")
    chat = PromptRecord([{"role": "user", "content": "Say hello to Ada."}], "test:chat")
    store_pair(engine, "sample", chat, "Hello, Ada!", "Hi.")
    config = SynthesisConfig(tools=ToolsConfig(enabled=["python_sandbox"])).model_dump(mode="json")
    with session_scope(engine) as session:
        ensure_run(session, "code", "c" * 64, config)
    problem = load_prompts([PromptSourceConfig(path=str(FIXTURE))])[0]
    canonical = json.loads(FIXTURE.read_text(encoding="utf-8").splitlines()[0])["canonical_solution"]
    humaneval = store_pair(engine, "code", problem, canonical, "    return None\n")
    add = PromptRecord(
        [{"role": "user", "content": "Write add(a, b)."}], "test:coding",
        {"tests": "assert add(2, 3) == 5\nassert add(0, 0) == 0"},
    )
    wrong_code = store_pair(engine, "code", add, "def add(a, b):\n    return a - b", "def add(a, b):\n    return a * b")
    yield Stored(engine, db_url, wrong_sum, wrong_code, humaneval)
    engine.dispose()


def snapshot(stored: Stored) -> str:
    """Every row of every table (the runs' metrics and `updated_at` among them): what a read-only audit must
    leave as it was. Not the SQLite file's bytes: closing the last connection checkpoints the WAL into it."""
    digest = hashlib.sha256()
    with stored.engine.connect() as conn:
        for table in sorted(inspect(stored.engine).get_table_names()):
            rows = conn.execute(text(f'SELECT * FROM "{table}"')).all()
            digest.update(f"{table}:{sorted(repr(tuple(row)) for row in rows)}".encode())
    return digest.hexdigest()


def test_audit_lists_the_pair_todays_verifiers_reject_and_writes_nothing(stored: Stored) -> None:
    before = snapshot(stored)
    report = audit_run(stored.engine, "sample")
    assert snapshot(stored) == before
    assert report.tools == ["reference_answer", "calculator"]
    assert (report.pairs, report.verified, report.not_verified, report.no_verdict) == (7, 5, 1, 1)
    assert report.stored_verified == 7  # every pair was stored as verified
    (failing,) = report.failing
    assert (failing.pair_id, failing.prompt) == (stored.wrong_sum, "What is 7 + 8?")
    assert (failing.stored_chosen, failing.chosen, failing.rejected) == (True, False, True)
    assert failing.problems[0].startswith("chosen answer fails reference_answer: ")
    assert "rejected answer" not in " ".join(failing.problems)  # a wrong chosen answer is the whole story
    (silent,) = [a for a in report.pair_audits if a.status == "no_verdict"]
    assert silent.prompt == "Say hello to Ada." and silent.checks == []


def test_audit_runs_the_sandbox_on_code_pairs(stored: Stored) -> None:
    report = audit_run(stored.engine, "code", workers=2)
    assert report.tools == ["python_sandbox"]
    assert (report.pairs, report.verified, report.not_verified) == (2, 1, 1)
    verified = next(a for a in report.pair_audits if a.pair_id == stored.humaneval)
    assert verified.status == "verified" and [c.verdict for c in verified.checks] == [True, False]
    (failing,) = report.failing
    assert failing.pair_id == stored.wrong_code
    assert failing.problems == [
        "chosen answer fails python_sandbox: failed: test 1 failed: assert add(2, 3) == 5, at line 1 (AssertionError: )"
    ]


@pytest.mark.slow
def test_audit_from_the_terminal(stored: Stored) -> None:
    """--json carries every pair not verified now and writes nothing; the text names the pair and the check, and
    with --record the summary is kept in the run's metrics; an unknown run is one line of error."""
    before = snapshot(stored)
    as_json = prefsmith("runs", "audit", "sample", "--json", "--db", stored.url)
    assert as_json.returncode == 0, as_json.stderr
    assert snapshot(stored) == before
    report = json.loads(as_json.stdout)
    assert (report["verified"], report["not_verified"], report["no_verdict"]) == (5, 1, 1)
    statuses = {a["pair_id"]: a["status"] for a in report["pair_audits"]}
    assert statuses[stored.wrong_sum] == "not_verified" and sorted(statuses.values()) == ["no_verdict", "not_verified"]
    recorded = prefsmith("runs", "audit", "sample", "--record", "--tool", "reference_answer", "--db", stored.url)
    assert recorded.returncode == 0, recorded.stderr
    assert "7 accepted pairs re-checked with reference_answer" in recorded.stdout
    assert "stored as verified: 7" in recorded.stdout and f"  {stored.wrong_sum}\n" in recorded.stdout
    assert "    prompt: What is 7 + 8?\n    chosen answer fails reference_answer: " in recorded.stdout
    with session_scope(stored.engine) as session:
        audit = get_run(session, "sample").metrics["audit"]
    assert audit["tools"] == ["reference_answer"] and audit["not_verified_pairs"] == [stored.wrong_sum]
    assert (audit["pairs"], audit["verified"], audit["no_verdict"]) == (7, 5, 1)
    assert_user_error(prefsmith("runs", "audit", "nope", "--db", stored.url), "no run named 'nope'")


def test_audit_refuses_what_it_cannot_check_with(stored: Stored) -> None:
    with pytest.raises(ConfigError, match="unknown tool 'oracle'"):
        audit_run(stored.engine, "sample", tool_names=["oracle"])
    with session_scope(stored.engine) as session:  # a run stored with settings today's schema refuses
        ensure_run(session, "stale", "d" * 64, {"tools": {"enabled": ["calculator"], "sandbox_timeout_s": -1}})
    with pytest.raises(ConfigError, match="the run's stored tools settings: field 'sandbox_timeout_s'"):
        audit_run(stored.engine, "stale")
    with pytest.raises(NotFoundError, match="no run named 'nope'"):
        audit_run(stored.engine, "nope")


def test_a_tool_that_cannot_check_gives_no_verdict_and_says_why(stored: Stored) -> None:
    report = audit_run(stored.engine, "sample", tool_names=["tests.test_audit:BrokenTool"])
    assert (report.pairs, report.verified, report.not_verified, report.no_verdict) == (7, 0, 0, 7)
    assert report.pair_audits[0].problems == [
        "broken could not check the chosen answer: RuntimeError: the checker is down",
        "broken could not check the rejected answer: RuntimeError: the checker is down",
    ]
