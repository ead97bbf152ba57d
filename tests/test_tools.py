"""The judge's tools: exact arithmetic without eval, reference matching, BM25 retrieval, the sandbox against
hostile code, the registry and plug-ins, and `prefsmith tools` from the terminal."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from configs.errors import ConfigError
from configs.schema import ToolsConfig
from tests.test_cli import assert_user_error, prefsmith
from tools.base import Evidence, JudgeTool, PromptContext
from tools.calculator import CalculatorError, CalculatorTool, evaluate
from tools.jail import SandboxPolicy, plan_for
from tools.reference_answer import ReferenceAnswerTool
from tools.registry import build_tools
from tools.retrieval import CorpusError, RetrievalTool
from tools.sandbox import PythonSandboxTool, extract_code, run_python
from tools.seccomp import SYSCALLS, seccomp_filter


def test_calculator_is_exact_and_refuses_code() -> None:
    assert evaluate("(12 + 7) * 3") == 57
    assert evaluate("1/3 + 1/6") == evaluate("1/2")
    assert evaluate("2^10 ÷ 4") == 256
    for hostile in ("__import__('os').system('id')", "(1).__class__", "open('x')", "[x for x in ()]", "a + 1"):
        with pytest.raises(CalculatorError, match="not allowed"):
            evaluate(hostile)
    with pytest.raises(CalculatorError, match="more than 10000 digits"):
        evaluate("(10**1000)**1000")
    assert CalculatorTool().invoke({"expression": "3 * (4 + 5)"})["data"]["value"] == 27


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("round(1, 10**9)", "round: more than 1000 digits"),  # took hours: Fraction rounding builds 10**ndigits
        ("exp(1000)", "exp: no finite result"),  # raised OverflowError
        ("1e308 * 10", "no finite result"),
        ("(-8) ** 0.5", "no real result"),
        ("(1/10**1000) ** -1000", "more than 10000 digits"),
        ("*".join(["10**1000"] * 12), "more than 10000 digits"),
    ],
)
def test_calculator_is_bounded_and_finite(expression: str, error: str) -> None:
    started = time.perf_counter()
    evidence = CalculatorTool().invoke({"expression": expression})
    assert evidence["ok"] is False and error in evidence["error"]
    assert time.perf_counter() - started < 1.0


def test_absurd_claimed_answers_are_wrong_not_unjudged() -> None:
    huge = "9" * 400
    for claim in (huge, huge + ".5", "-" + huge):
        referenced = ReferenceAnswerTool().invoke({"candidate": f"The answer is {claim}", "gold": "4"})
        assert referenced["ok"] and referenced["verdict"] is False
        stepped = CalculatorTool().invoke({"candidate": f"2 + 2 = {claim}"})
        assert stepped["ok"] and stepped["verdict"] is False
    assert ReferenceAnswerTool().invoke({"candidate": f"The answer is {huge}", "gold": huge})["verdict"] is True
    assert CalculatorTool().invoke({"candidate": f"2 ** 100 = {2**100}"})["verdict"] is True


@pytest.mark.parametrize(
    ("candidate", "gold", "kind", "verdict"),
    [
        ("So 12 + 5 = 17.", "17", "numeric", True),
        ("The answer is 1,250 apples", "1250", "numeric", True),
        ("I think it's 16, no wait, the answer is 18", "17", "numeric", False),
        ("no idea", "17", "numeric", False),
        # math-verify's equivalences: fractions, decimals, LaTeX, thousands separators, units
        ("The answer is 0.5.", "1/2", "numeric", True),
        ("The answer is \\frac{1}{2}.", "0.5", "numeric", True),
        ("Answer: $\\frac{1}{2}$", "1/2", "numeric", True),
        ("\\boxed{\\frac{1}{2}}", "0.5", "numeric", True),
        ("The answer is 1,000.", "1000", "numeric", True),
        ("#### 1000", "1,000", "numeric", True),
        ("The answer is 40 km.", "40", "numeric", True),
        # the committed answer, read strictly: an explicit final form, else the final line's one number
        ("The answer is 12.\n#### 13", "12", "numeric", False),
        ("The answer is 12 or 13.", "12", "numeric", False),
        ("12 + 5 = 17, so she has 17 apples and 3 pears", "17", "numeric", False),
        ("The answer is N.", "17", "numeric", False),
        ("The answer is 17.\nThe answer is 17.", "17", "numeric", True),
        ("I'd pick (C) because...", "C", "multiple_choice", True),
        ("Answer: B", "C", "multiple_choice", False),
        ("It is Paris, France.", "paris", "exact", True),
    ],
)
def test_reference_answer(candidate: str, gold: str, kind: str, verdict: bool) -> None:
    evidence = ReferenceAnswerTool().invoke({"candidate": candidate, "gold": gold, "kind": kind})
    assert evidence["ok"] and evidence["verdict"] is verdict


# The chosen answer `make demo` once reported verified (finish reason `length`): both tools read "the number after
# the last '='" (20, the gold answer), so one loose check was counted twice.
DEMO_CHOSEN = (
    "If Mia gives 8 stickers to each of her 6 friends, she has 6 x 8 = 40 stickers left.\n"
    "She has 6 - 40 = 20 stickers left.\n"
    "#### 2"
)


def test_the_demo_answer_commits_to_2_and_writes_two_false_steps() -> None:
    answer = ReferenceAnswerTool().invoke({"candidate": DEMO_CHOSEN, "gold": "20"})
    assert answer["verdict"] is False and answer["data"]["claimed"] == "2" and answer["data"]["check"] == "final answer"
    steps = CalculatorTool().invoke({"candidate": DEMO_CHOSEN})
    assert steps["verdict"] is False and steps["data"]["check"] == "steps"
    assert steps["data"]["statements"] == [
        {"statement": "6 x 8 = 40", "values": [48, 40], "holds": False},
        {"statement": "6 - 40 = 20", "values": [-34, 20], "holds": False},
    ]


@pytest.mark.parametrize(
    ("candidate", "statements", "verdict"),
    [
        ("12 + 7 = 19, then 19 x 3 = 57. The answer is 57.", [("12 + 7 = 19", True), ("19 x 3 = 57", True)], True),
        ("6 × 8 = 48 and 48 ÷ 6 = 8", [("6 × 8 = 48", True), ("48 ÷ 6 = 8", True)], True),
        ("8 times 6 = 48", [("8 × 6 = 48", True)], True),
        ("$6 \\times 8 = 48$", [("6 × 8 = 48", True)], True),
        ("1,000 + 250 = 1,250", [("1,000 + 250 = 1,250", True)], True),
        ("10 / 3 = 3.33", [("10 / 3 = 3.33", True)], True),  # right to the digits written
        ("1/3 = 0.5", [("1/3 = 0.5", False)], False),
        ("6 * 8 = 48 - 8 = 40", [("6 * 8 = 48 - 8 = 40", False)], False),  # a chain says every side is equal
        ("3 + 4 = 7 = 2 + 5", [("3 + 4 = 7 = 2 + 5", True)], True),
        # fragments of algebra or of a sentence are not statements that can be checked
        ("x + 3 = 7, so x = 4", [], None),
        ("2x - 3 = 7", [], None),
        ("50% of 80 = 40", [], None),
        ("half of 6 x 8 = 24", [], None),
        ("She has 20 stickers. The answer is 20.", [], None),
    ],
)
def test_calculator_checks_every_arithmetic_statement(
    candidate: str, statements: list[tuple[str, bool]], verdict: bool | None
) -> None:
    evidence = CalculatorTool().invoke({"candidate": candidate})
    assert evidence["ok"] and evidence["verdict"] is verdict
    assert [(s["statement"], s["holds"]) for s in evidence["data"]["statements"]] == statements


# Answers SmolLM2-135M wrote to the one-step problems (benchmarks/yield_bench.py), and continuations that make a
# false-looking start true: a candidate may be abandoned at a false step only where no continuation can undo it.
WRITTEN = [
    "Mia has 21 stickers, and she buys 9 more stickers. So, 21 - 9 = 11 stickers are left over. Mia has 11 stickers "
    "left.\n\nThe answer is 1",
    "There are 26 - 5 = 13 loaves of bread left.\n\nA helpful assistant is here to help you refine your answer.",
    "1.25 * 3 = 3\n2.5 * 3 = 6.5\n1.25 * 3 = 3\nThe answer is 3.",
    "In a 17-stick box, Mia has 17 * 4 = 60 stickers. She now has 60 - 4 = 36 stickers. The answer is 36.",
    "A box holds 6 pencils. So, 6 * 9 = 56. The answer is 56.",
    "She has 37 - 9 = 21 stickers left.\n#### 2\nThe answer is 2",
    "A train travels 6 km every hour. In 8 hours, it travels 6 * 8 = 48 km. The answer is 48.",
]
UNDONE = [
    "21 - 9 = 10 + 2 = 12 stickers are left.",
    "21 - 9 = 10 plus 2, so 12 stickers.",
    "26 - 5 = 21 loaves, and 6 x 8 = 48 pencils.",
    "10 / 3 = 3.33 each",
    "half of 6 x 8 = 24 apples",
    "6 x 8 = 40 + 8 = 48 in all",
]


@pytest.mark.parametrize("text", WRITTEN + UNDONE)
def test_a_false_step_is_settled_only_where_no_continuation_can_undo_it(text: str) -> None:
    """Every start of `text` that `settled_false_step` abandons is abandoned at the same place as the whole text,
    and the whole text fails the steps check; a text whose steps all hold is never abandoned at any start."""
    from tools.calculator import settled_false_step

    fails = CalculatorTool().invoke({"candidate": text})["verdict"] is False
    whole = settled_false_step(text)
    for end in range(1, len(text) + 1):
        cut = settled_false_step(text[:end])
        if cut is not None:
            assert fails and cut == whole, (text[:end], cut, whole)
            assert CalculatorTool().invoke({"candidate": cut})["verdict"] is False, "what is kept still fails"
    if text in UNDONE:
        assert whole is None
    else:
        assert (whole is not None) == fails


def test_a_settled_false_step_keeps_the_text_up_to_it() -> None:
    from tools.calculator import settled_false_step

    assert settled_false_step(WRITTEN[0]) == "Mia has 21 stickers, and she buys 9 more stickers. So, 21 - 9 = 11"
    assert settled_false_step("26 - 5 = 20.\n\nThe answer is 20.") == "26 - 5 = 20."
    assert settled_false_step("26 - 5 = 20") is None, "nothing after it yet: '20' may go on to '201'"
    assert settled_false_step("26 - 5 = 20 ti") is None, "'ti' may become 'times 1'"
    assert settled_false_step("26 - 5 = 21. The answer is 21.") is None


def test_calculator_applies_to_arithmetic_prompts_only() -> None:
    tool = CalculatorTool()
    assert tool.arguments_for(PromptContext(text="q", meta={"answer": 4}), "x") == {"candidate": "x"}
    assert tool.arguments_for(PromptContext(text="q", meta={"expression": "2 + 2"}), "x") == {"candidate": "x"}
    choice = PromptContext(text="q", meta={"answer": "B", "answer_kind": "multiple_choice"})
    assert tool.arguments_for(choice, "x") is None
    assert tool.arguments_for(PromptContext(text="q", meta={"tests": "assert f()"}), "x") is None
    # a prompt that poses an expression and carries no answer: its value is the reference answer's gold
    assert ReferenceAnswerTool().arguments_for(PromptContext(text="q", meta={"expression": "7 * 6"}), "42") == {
        "candidate": "42", "gold": "42", "kind": "numeric"}


def test_math_verify_works_from_threads_and_is_bounded_without_signals() -> None:
    """math-verify's own timeouts use signal.alarm, which fails outside the main thread (every comparison would
    silently be False there); ours bound it from any thread."""
    from concurrent.futures import ThreadPoolExecutor

    from tools.answers import AnswerCheckTimeout, bounded

    cases = [("The answer is 0.5.", "1/2", True), ("The answer is \\frac{1}{2}", "0.5", True),
             ("The answer is 1,000", "1000", True), ("The answer is 3", "4", False)] * 4
    tool = ReferenceAnswerTool()
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda c: tool.evidence({"candidate": c[0], "gold": c[1]}), cases))
    assert [(e.ok, e.verdict) for e in got] == [(True, v) for _, _, v in cases]
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(AnswerCheckTimeout, match="longer than 0.1 s"):
            pool.submit(bounded, time.sleep, 5, deadline_s=0.1).result()
    with pytest.raises(ZeroDivisionError):
        bounded(lambda: 1 / 0)


def test_the_finish_check() -> None:
    from tools.finished import FinishedTool

    tool = FinishedTool()
    cut = tool.evidence(tool.arguments_for_finish(PromptContext(text="q"), "length"))
    assert cut.verdict is False and cut.summary == "did not finish (cut off at max_tokens)"
    assert tool.evidence(tool.arguments_for_finish(PromptContext(text="q"), "stop")).verdict is True
    allowed = PromptContext(text="q", meta={"allow_unfinished": True})
    assert tool.evidence(tool.arguments_for_finish(allowed, "length")).verdict is None
    assert tool.evidence(tool.arguments_for_finish(PromptContext(text="q"), None)).verdict is None
    abandoned = tool.evidence(tool.arguments_for_finish(allowed, "abandoned"))
    assert abandoned.verdict is False and "false step" in abandoned.summary, "whatever the task allows"
    assert tool.arguments_for(PromptContext(text="q"), "text") is None, "named in tools.enabled it adds nothing"


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


def test_sandbox_judges_each_test_and_reports_it() -> None:
    good = run_python("def add(a, b):\n    return a + b", "assert add(2, 3) == 5\nassert add(0, 0) == 0")
    bad = run_python("def add(a, b):\n    return a - b", "assert add(2, 3) == 5\nassert add(0, 0) == 0")
    assert (good.passed, good.outcome) == (True, "passed")
    assert [(t.source, t.passed) for t in good.tests] == [
        ("assert add(2, 3) == 5", True),
        ("assert add(0, 0) == 0", True),
    ]
    assert (bad.passed, bad.outcome) == (False, "failed")
    assert [t.passed for t in bad.tests] == [False, True] and bad.tests[0].error.startswith("AssertionError")
    assert bad.reason == "test 1 failed: assert add(2, 3) == 5, at line 1 (AssertionError: )"
    assert (bad.tests[0].line, bad.tests[1].line) == (1, 0)
    assert extract_code("Here:\n```python\nx = 1\n```\nand\n```\ny = 2\n```") == "x = 1\n\n\ny = 2\n"


def test_leaving_early_is_not_a_pass_from_the_terminal() -> None:
    """The issue's reproduction: `sys.exit(0)` before a failing test used to be verified correct."""
    arguments = json.dumps({"code": "import sys\nsys.exit(0)", "tests": "assert False"})
    ran = prefsmith("tools", "run", "python_sandbox", "--args", arguments)
    assert ran.returncode == 0, ran.stderr
    evidence = json.loads(ran.stdout)
    assert evidence["verdict"] is False and evidence["data"]["outcome"] == "failed"
    assert "SystemExit" in evidence["data"]["reason"]
    assert "seccomp filter" in evidence["data"]["isolation"] and evidence["data"]["missing_isolation"] == []
    exited = run_python("import os\nos._exit(0)", "assert False")
    assert (exited.passed, exited.outcome) == (False, "incomplete") and "left early" in exited.reason


def test_sandbox_refuses_to_run_unprotected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No bubblewrap: refused evidence and a ConfigError at tool build time, unless weaker isolation is allowed
    explicitly; then the code runs and the evidence names what was missing."""
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no bwrap on it
    plan_for.cache_clear()
    try:
        refused = PythonSandboxTool().invoke({"code": "x = 1", "tests": "assert x == 1"})
        assert refused["ok"] is False and refused["verdict"] is None
        assert "bubblewrap" in refused["error"] and "sandbox_allow_weaker_isolation" in refused["error"]
        with pytest.raises(ConfigError, match="tool 'python_sandbox': bubblewrap"):
            build_tools(ToolsConfig(enabled=["python_sandbox"]))
        weaker = build_tools(ToolsConfig(enabled=["python_sandbox"], sandbox_allow_weaker_isolation=True))
        ran = weaker["python_sandbox"].invoke({"code": "x = 1", "tests": "assert x == 1\nassert x == 2"})
        assert ran["ok"] and ran["verdict"] is False and [t["passed"] for t in ran["data"]["tests"]] == [True, False]
        assert "bubblewrap" in " ".join(ran["data"]["missing_isolation"])
        assert "user namespace" not in ran["data"]["isolation"]
    finally:
        plan_for.cache_clear()


def test_a_call_that_cannot_compile_or_start_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests that do not compile, and a sandbox that cannot start, are answered without a file descriptor or a
    scratch folder left on the host (they used to leak the report's pipes, and the throwaway folder)."""
    import dataclasses
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    weaker = dataclasses.replace(plan_for(SandboxPolicy()), bwrap=None)  # runs in a throwaway folder
    unstartable = dataclasses.replace(weaker, interpreter=str(tmp_path / "no-python"))
    fds = len(os.listdir("/proc/self/fd"))
    uncompiled = run_python("x = 1", "assert (")
    unstarted = run_python("x = 1", "assert x == 1", _plan=unstartable, _require=False)
    assert (uncompiled.outcome, unstarted.outcome) == ("failed", "refused") and "cannot start" in unstarted.reason
    assert len(os.listdir("/proc/self/fd")) == fds and list(tmp_path.iterdir()) == []
    ran = run_python("x = 1", "assert x == 1", _plan=weaker, _require=False)
    assert ran.passed and list(tmp_path.iterdir()) == []


def test_sandbox_settings_are_bounded_when_the_config_loads() -> None:
    for field, value in (("sandbox_memory_mb", 9000), ("sandbox_timeout_s", 3600), ("sandbox_processes", 1000),
                         ("sandbox_scratch_mb", 0)):
        with pytest.raises(ValidationError, match=field):
            ToolsConfig(**{field: value})
    assert_user_error(
        prefsmith("tools", "run", "python_sandbox", "--set", "tools.sandbox_timeout_s=600", "--args", '{"code": "1"}'),
        "tools.sandbox_timeout_s",
    )


def test_seccomp_tables_match_libseccomp() -> None:
    """The syscall numbers the filter denies are the kernel's (checked against libseccomp where installed)."""
    library = ctypes.util.find_library("seccomp")
    if library is None:
        pytest.skip("libseccomp is not installed")
    libseccomp = ctypes.CDLL(library)
    libseccomp.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    for machine, (arch, numbers) in SYSCALLS.items():
        for name, number in numbers.items():
            assert libseccomp.seccomp_syscall_resolve_name_arch(arch, name.encode()) == number, (machine, name)
    program = seccomp_filter("x86_64")
    assert program is not None and len(program) % 8 == 0 and len(program) // 8 < 256
    assert seccomp_filter("sparc") is None


def test_a_forger_written_against_the_harness_is_still_caught() -> None:
    """It used to work: a signal handler's frame led to the key and the report pipe. The code now runs in a
    process forked before the harness read either, and the tests are judged in the other one."""
    forger = (
        "import os, signal, time, _hashlib\n"
        "def handler(sig, frame):\n"
        "    while frame is not None:\n"
        "        if 'key' in frame.f_locals and 'report_fd' in frame.f_locals:\n"
        "            key, fd = frame.f_locals['key'], frame.f_locals['report_fd']\n"
        "            for record in (b'C\\tok\\t', b'T\\t0\\tpass\\tassert f() == 1\\t', b'E\\t1'):\n"
        "                mac = _hashlib.hmac_digest(key, record, 'sha256').hex().encode()\n"
        "                os.write(fd, record + b'\\t' + mac + b'\\n')\n"
        "            os._exit(0)\n"
        "        frame = frame.f_back\n"
        "signal.signal(signal.SIGALRM, handler)\nsignal.setitimer(signal.ITIMER_REAL, 0.01)\ntime.sleep(1)\n"
        "def f():\n    return 2\n"
    )
    forged = run_python(forger, "assert f() == 1")
    assert (forged.passed, forged.outcome) == (False, "failed"), forged.reason
    assert [t.passed for t in forged.tests] == [False]


def test_the_tests_only_see_plain_data_from_the_code() -> None:
    """Values cross as literals: the tests compare them in a process of their own, with the real builtins.
    Candidate objects do not cross (a documented limit); exceptions keep their built-in type."""
    ran = run_python(
        "import os\nx = 3\nclass Yes:\n    def __eq__(self, other):\n        return True\n"
        "def f(n):\n    if n < 0:\n        raise ValueError('negative')\n"
        "    return [n, {'k': (1.5, None, b'b', -2, 1+2j)}]\n"
        "def yes():\n    return Yes()\ndef len(x):\n    return 0\ndef stop(n):\n    raise StopIteration\n",
        "assert f(1) == [1, {'k': (1.5, None, b'b', -2, 1+2j)}]\n"
        "try:\n    f(-1)\n    assert False\nexcept ValueError as exc:\n    assert str(exc) == 'negative'\n"
        "def twice():\n    return f(x)[0] * 2\nassert twice() == 6\n"
        "assert os.listdir('.') == []\n"
        "assert yes() == 1\n"
        "assert len([]) == 0\n"
        "assert all(map(stop, [1, 2]))\n",
    )
    assert [t.passed for t in ran.tests] == [True, True, True, True, True, False, False, False], ran.tests
    assert ran.tests[5].error == "TypeError: the code returned an object the tests cannot inspect: Yes"
    assert ran.tests[6].error == "TypeError: the code redefines len, a builtin the tests use"
    assert ran.tests[7].error == "StopIteration: "  # not the built-in type: it would end map() early
    assert ran.outcome == "failed"


def test_registry_builds_configured_tools_and_plugins() -> None:
    tools = build_tools(ToolsConfig(enabled=["reference_answer", "calculator", "tools.calculator:CalculatorTool"]))
    assert list(tools) == ["reference_answer", "calculator"]
    with pytest.raises(ConfigError, match="unknown tool 'web_search'"):
        build_tools(ToolsConfig(enabled=["web_search"]))
    with pytest.raises(ConfigError, match="not a subclass of tools.base.JudgeTool"):
        build_tools(ToolsConfig(enabled=["tools.calculator:evaluate"]))
    with pytest.raises(ConfigError, match="needs tools.retrieval_corpus"):
        build_tools(ToolsConfig(enabled=["retrieval"]))


@pytest.mark.slow
def test_tools_cli() -> None:
    listed = prefsmith("tools", "list")
    assert listed.returncode == 0 and "python_sandbox(code, tests, prelude, timeout_s, memory_mb)" in listed.stdout
    ran = prefsmith("tools", "run", "reference_answer", "--args", '{"candidate": "It is 42", "gold": "42"}')
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["verdict"] is True
    assert_user_error(
        prefsmith("tools", "run", "calculator", "--args", '{"expr": "1"}'), "give 'expression' (to evaluate)"
    )
    assert_user_error(prefsmith("tools", "run", "calculator", "--args", "{oops"), "--args: invalid JSON")


def test_cheap_tools_run_in_the_episodes_process_and_untrusted_code_does_not() -> None:
    import threading

    from pipelines.synthesis.ray_tools import wrap_tool
    from tools.calculator import CalculatorTool
    from tools.reference_answer import ReferenceAnswerTool
    from tools.sandbox import PythonSandboxTool

    for tool in (ReferenceAnswerTool(), CalculatorTool()):
        assert wrap_tool(tool, timeout_s=5, abandon=threading.Event()) is tool
    assert not PythonSandboxTool.runs_in_process, "sandboxed code runs as a Ray task, off the driver"
    from tests.hung_tool import HungTool

    assert not HungTool.runs_in_process, "a plug-in's cost is unknown: it runs as a Ray task, with a timeout"


class _ManagedTool(JudgeTool):
    """A plug-in written the LangChain way: its `_run` takes the callback manager, so it needs `invoke`."""

    name: str = "managed"
    description: str = "Says whether it was given a callback manager."

    def _run(self, candidate: str, run_manager: Any = None) -> dict[str, Any]:
        return {"tool": self.name, "ok": True, "verdict": run_manager is not None, "data": {"candidate": candidate}}

    def arguments_for(self, prompt: PromptContext, candidate: str | None) -> dict[str, Any] | None:
        return None if candidate is None else {"candidate": candidate}


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        (ReferenceAnswerTool(), {"candidate": "so it is 17", "gold": "17"}),
        (ReferenceAnswerTool(), {"candidate": "17.4", "gold": "17", "kind": "numeric", "tolerance": "0.5"}),
        (ReferenceAnswerTool(), {"candidate": "Answer: B", "gold": "C", "kind": "multiple_choice", "extra": 1}),
        (CalculatorTool(), {"expression": "12 * (3 + 4)", "candidate": "The answer is 84."}),
        (CalculatorTool(), {"expression": "2 ** 4096"}),
    ],
)
def test_evidence_is_what_langchain_invoke_gives(tool: JudgeTool, arguments: dict[str, Any]) -> None:
    # evidence() skips LangChain's per-call machinery; the checked arguments and the result must not change
    assert tool.evidence(arguments) == Evidence.model_validate(tool.invoke(arguments))


def test_evidence_rejects_bad_arguments_by_field_and_keeps_langchain_tools_working() -> None:
    bad = ReferenceAnswerTool().evidence({"candidate": "17", "gold": "17", "tolerance": "not a number"})
    assert not bad.ok and bad.verdict is None and "tolerance" in (bad.error or "")
    missing = CalculatorTool().evidence({"expression": 3})
    assert not missing.ok and "expression" in (missing.error or "")
    managed = _ManagedTool().evidence({"candidate": "x"})
    assert managed.ok and managed.verdict is True, "a _run that takes run_manager is called through invoke"
