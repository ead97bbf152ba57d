"""The judge's tools: exact arithmetic without eval, reference matching, BM25 retrieval, the sandbox against
hostile code, the registry and plug-ins, and `prefsmith tools` from the terminal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from configs.errors import ConfigError
from configs.schema import ToolsConfig
from tests.test_cli import assert_user_error, prefsmith
from tools.base import PromptContext
from tools.calculator import CalculatorError, CalculatorTool, evaluate
from tools.reference_answer import ReferenceAnswerTool
from tools.registry import build_tools
from tools.retrieval import CorpusError, RetrievalTool
from tools.sandbox import SandboxLimits, extract_code, run_python


def test_calculator_is_exact_and_refuses_code() -> None:
    assert evaluate("(12 + 7) * 3") == 57
    assert evaluate("1/3 + 1/6") == evaluate("1/2")
    assert evaluate("2^10 ÷ 4") == 256
    for hostile in ("__import__('os').system('id')", "(1).__class__", "open('x')", "[x for x in ()]", "a + 1"):
        with pytest.raises(CalculatorError, match="not allowed"):
            evaluate(hostile)
    with pytest.raises(CalculatorError, match="more than 10000 digits"):
        evaluate("(10**1000)**1000")
    evidence = CalculatorTool().invoke({"expression": "3 * (4 + 5)", "candidate": "3 * 9 = 27"})
    assert evidence["verdict"] is True and evidence["data"]["value"] == 27
    wrong = CalculatorTool().invoke({"expression": "3 * (4 + 5)", "candidate": "The answer is 28."})
    assert wrong["verdict"] is False and wrong["data"]["claimed"] == 28


@pytest.mark.parametrize(
    ("candidate", "gold", "kind", "verdict"),
    [
        ("So 12 + 5 = 17.", "17", "numeric", True),
        ("The answer is 1,250 apples", "1250", "numeric", True),
        ("I think it's 16, no wait, the answer is 18", "17", "numeric", False),
        ("no idea", "17", "numeric", False),
        ("I'd pick (C) because...", "C", "multiple_choice", True),
        ("Answer: B", "C", "multiple_choice", False),
        ("It is Paris, France.", "paris", "exact", True),
    ],
)
def test_reference_answer(candidate: str, gold: str, kind: str, verdict: bool) -> None:
    evidence = ReferenceAnswerTool().invoke({"candidate": candidate, "gold": gold, "kind": kind})
    assert evidence["ok"] and evidence["verdict"] is verdict


def test_retrieval_ranks_the_relevant_passage_first(tmp_path: Path) -> None:
    (tmp_path / "geo.md").write_text("Paris is the capital of France.\n\nBerlin is the capital of Germany.")
    (tmp_path / "fruit.txt").write_text("Bananas are yellow and rich in potassium.")
    tool = RetrievalTool(corpus=str(tmp_path))
    passages = tool.invoke({"query": "What is the capital of Germany?", "k": 2})["data"]["passages"]
    assert passages[0]["source"] == "geo.md#2" and "Berlin" in passages[0]["text"]
    assert all("Bananas" not in p["text"] for p in passages)
    assert tool.arguments_for(PromptContext(text="capital of Germany?"), None) == {
        "query": "capital of Germany?",
        "k": 3,
    }
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    failed = RetrievalTool(corpus=str(corpus)).evidence({"query": "ok"})
    assert not failed.ok and "c.jsonl:2: expected a JSON object with a 'text' field" in failed.error
    with pytest.raises(CorpusError, match="does not exist"):
        RetrievalTool(corpus=str(tmp_path / "missing")).index  # noqa: B018 - the property loads the corpus


def test_sandbox_runs_tests() -> None:
    good = run_python("def add(a, b):\n    return a + b", "assert add(2, 3) == 5")
    bad = run_python("def add(a, b):\n    return a - b", "assert add(2, 3) == 5")
    assert (good.passed, good.outcome) == (True, "passed")
    assert (bad.passed, bad.outcome) == (False, "failed") and "AssertionError" in bad.stderr
    assert extract_code("Here:\n```python\nx = 1\n```\nand\n```\ny = 2\n```") == "x = 1\n\n\ny = 2\n"


HOSTILE = {
    "infinite loop": ("while True:\n    pass", {"cpu_limit", "timeout"}),
    "sleep past the wall clock": ("import time\ntime.sleep(60)", {"timeout"}),
    "fork bomb": ("import os\nwhile True:\n    os.fork()", {"blocked"}),
    "subprocess": ("import subprocess\nsubprocess.run(['sh', '-c', 'echo hi'])", {"blocked"}),
    "8 GB allocation": ("x = bytearray(8 * 1024 ** 3)", {"memory_limit"}),
    "socket to the database": ("import socket\nsocket.create_connection(('127.0.0.1', 5432))", {"blocked"}),
    "native code": ("import ctypes\nctypes.CDLL(None).fork()", {"blocked"}),
    "flood of output": ("while True:\n    print('x' * 4096)", {"output_limit"}),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_sandbox_contains_hostile_code(name: str) -> None:
    code, outcomes = HOSTILE[name]
    result = run_python(code, "", SandboxLimits(cpu_seconds=2, wall_seconds=4))
    assert not result.passed
    assert result.outcome in outcomes, (result.outcome, result.stderr[-300:])
    assert result.seconds < 10


def test_sandbox_keeps_writes_and_secrets_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = tmp_path / "pwned.txt"
    escaped = run_python(f"open({str(outside)!r}, 'w').write('x')")
    assert escaped.outcome == "blocked" and not outside.exists()
    inside = run_python("open('scratch.txt', 'w').write('ok')\nprint(open('scratch.txt').read())")
    assert inside.passed and inside.stdout.strip() == "ok"
    monkeypatch.setenv("PREFSMITH_TEST_SECRET", "hunter2")
    leak = run_python("import os\nprint(sorted(os.environ))\nprint(open('/proc/self/environ').read())")
    assert "hunter2" not in leak.stdout + leak.stderr and "PREFSMITH_TEST_SECRET" not in leak.stdout
    assert os.environ["PREFSMITH_TEST_SECRET"] == "hunter2"


def test_registry_builds_configured_tools_and_plugins() -> None:
    tools = build_tools(ToolsConfig(enabled=["reference_answer", "calculator", "tools.calculator:CalculatorTool"]))
    assert list(tools) == ["reference_answer", "calculator"]
    with pytest.raises(ConfigError, match="unknown tool 'web_search'"):
        build_tools(ToolsConfig(enabled=["web_search"]))
    with pytest.raises(ConfigError, match="not a subclass of tools.base.JudgeTool"):
        build_tools(ToolsConfig(enabled=["tools.calculator:evaluate"]))
    with pytest.raises(ConfigError, match="needs tools.retrieval_corpus"):
        build_tools(ToolsConfig(enabled=["retrieval"]))


def test_tools_cli() -> None:
    listed = prefsmith("tools", "list")
    assert listed.returncode == 0 and "python_sandbox(code, tests, timeout_s, memory_mb)" in listed.stdout
    ran = prefsmith("tools", "run", "reference_answer", "--args", '{"candidate": "It is 42", "gold": "42"}')
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["verdict"] is True
    assert_user_error(
        prefsmith("tools", "run", "calculator", "--args", '{"expr": "1"}'), "'expression': Field required"
    )
    assert_user_error(prefsmith("tools", "run", "calculator", "--args", "{oops"), "--args: invalid JSON")
