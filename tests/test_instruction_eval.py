"""Instruction-following evaluation: IFEval's four figures against if-verifiable's reference scorer on a fixture of
responses, the bootstrap intervals (seeded, covering, paired), the per-type table, a malformed IFEval-format line
refused through `prefsmith eval task`, and the real SmolLM2 evaluated through transformers and through vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.prompt_sources import load_evaluation_set
from tools.instruction_checks import CHECKERS
from training.evaluation.base import ProblemSet
from training.evaluation.instructions import (
    InstructionPrompt,
    InstructionSet,
    figures,
    paired_change,
    pass_counts,
    per_type_table,
    score_answers,
)

FIXTURE = Path(__file__).parent / "data" / "instructions_fixture.jsonl"


def fixture_rows() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def fixture_prompts(rows: list[dict]) -> list[InstructionPrompt]:
    return [InstructionPrompt(str(r["key"]), [{"role": "user", "content": r["prompt"]}], r["prompt"],
                              r["instruction_id_list"], r["kwargs"]) for r in rows]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from pipelines.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def test_figures_match_the_reference_scorer() -> None:
    rows = fixture_rows()
    results = score_answers(fixture_prompts(rows), [(r["response"], "stop") for r in rows])
    ours = figures([pass_counts(r) for r in results], seed=0)
    CHECKERS.ifeval()
    common = CHECKERS.common
    prompt_strict = prompt_loose = 0.0
    passed_strict = passed_loose = total = 0
    for row in rows:
        kwargs = [{k: v for k, v in (k or {}).items() if v is not None} for k in row["kwargs"]]
        found, scores = common.evaluate_instructions(
            row["response"], row["instruction_id_list"], kwargs, row["prompt"], CHECKERS.ifeval()
        )
        prompt_strict += scores.binary_strict
        prompt_loose += scores.binary_loose
        passed_strict += sum(r.strict_pass for r in found)
        passed_loose += sum(r.loose_pass for r in found)
        total += len(row["instruction_id_list"])  # an empty answer fails every instruction it was given
    assert ours["prompt_strict"].value == round(prompt_strict / len(rows), 4)
    assert ours["prompt_loose"].value == round(prompt_loose / len(rows), 4)
    assert ours["instruction_strict"].value == round(passed_strict / total, 4)
    assert ours["instruction_loose"].value == round(passed_loose / total, 4)
    # the fixture has passing and failing answers: the figures are strictly between 0 and 1
    assert 0 < ours["prompt_strict"].value < 1
    assert ours["prompt_loose"].value >= ours["prompt_strict"].value


def test_intervals_are_seeded_and_cover_the_value() -> None:
    rows = fixture_rows()
    counts = [pass_counts(r) for r in score_answers(fixture_prompts(rows), [(r["response"], "stop") for r in rows])]
    first, again, other = figures(counts, seed=3), figures(counts, seed=3), figures(counts, seed=4)
    assert first == again
    assert any(first[key].ci95 != other[key].ci95 for key in first)
    for measure in first.values():
        low, high = measure.ci95
        assert 0 <= low <= measure.value <= high <= 1
        assert high - low > 0.05  # 70 prompts, about half passing: the interval is not a point
    assert figures([[1, 1, 2, 2, 2]] * 10, seed=0)["prompt_strict"].ci95 == (1.0, 1.0)


def test_paired_change_is_zero_against_itself_and_sees_a_gain() -> None:
    before = [[0, 0, 0, 1, 2]] * 20 + [[1, 1, 2, 2, 2]] * 20
    after = [[1, 1, 2, 2, 2]] * 10 + [[0, 0, 0, 1, 2]] * 10 + [[1, 1, 2, 2, 2]] * 20  # 10 prompts now pass
    same = paired_change(before, before, seed=0)
    assert all(m.value == 0 and m.ci95 == (0.0, 0.0) for m in same.values())
    change = paired_change(after, before, seed=0)
    assert change["prompt_strict"].value == 0.25
    assert change["instruction_strict"].value == round((60 - 40) / 80, 4)
    assert change["instruction_loose"].value == round((70 - 60) / 80, 4)
    assert change["prompt_strict"].ci95[0] > 0  # no prompt got worse: a gain on (almost) every resample
    assert change["prompt_loose"].ci95[1] <= 0.5
    # unpaired prompts are refused
    with pytest.raises(Exception, match="same prompts"):
        paired_change(after[:-1], before, seed=0)


def test_per_type_table_counts_each_instruction() -> None:
    rows = fixture_rows()
    results = score_answers(fixture_prompts(rows), [(r["response"], "stop") for r in rows])
    table = {row.type: row for row in per_type_table(results)}
    given: dict[str, int] = {}
    for row in rows:
        for instruction_id in row["instruction_id_list"]:
            given[instruction_id] = given.get(instruction_id, 0) + 1
    assert {t: r.n for t, r in table.items()} == given
    existence = table["keywords:existence"]  # key 1000 passes, 1001 fails
    assert existence.strict == round(sum(
        i["strict"] for r in results for i in r.instructions if i["id"] == "keywords:existence") / existence.n, 4)
    assert all(0 <= r.strict <= r.loose <= 1 for r in table.values())


def test_sources_load_as_instruction_sets(tmp_path: Path) -> None:
    held_out = load_evaluation_set("builtin:instructions", 6, 0)
    assert isinstance(held_out, InstructionSet) and held_out.split == "heldout" and len(held_out.prompts) == 6
    assert isinstance(load_evaluation_set("builtin:arithmetic", 3, 0), ProblemSet)
    path = tmp_path / "ifeval.jsonl"
    path.write_text("\n".join(json.dumps({k: r[k] for k in ("key", "prompt", "instruction_id_list", "kwargs")})
                              for r in fixture_rows()[:5]) + "\n")
    from_file = load_evaluation_set(str(path))
    unique = list(dict.fromkeys(r["prompt"] for r in fixture_rows()[:5]))  # one prompt per text, as loading keeps
    assert isinstance(from_file, InstructionSet) and [p.prompt for p in from_file.prompts] == unique
    assert from_file.prompts[0].instruction_ids == ["keywords:existence"]


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"instruction_id_list": ["punctuation:no_commas"], "kwargs": [{}]}, "unknown instruction id"),
        ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": "ten",
          "relation": "at least"}]}, "must be a whole number"),
        ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]}, "kwargs objects"),
    ],
)
def test_malformed_line_is_refused_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: dict, named: str
) -> None:
    good = {"key": 1, "prompt": "Say hello without commas.", "instruction_id_list": ["punctuation:no_comma"],
            "kwargs": [{}]}
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({"key": 2, "prompt": "Say hi.", **bad}) + "\n")
    code, out, err = run_cli(["eval", "task", "--source", str(path), "--out", str(tmp_path / "report")], capsys)
    assert code != 0
    assert f"{path}:2" in out + err and named in out + err
    assert "Traceback" not in out + err
    assert not (tmp_path / "report").exists()


def _eval_through_cli(backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    out = tmp_path / f"report-{backend}"
    code, stdout, stderr = run_cli(
        ["eval", "task", "--source", "builtin:instructions", "--limit", "4", "--max-tokens", "48",
         "--backend", backend, "--out", str(out)], capsys)
    assert code == 0, stdout + stderr
    report = json.loads((out / "report.json").read_text())
    assert report["backend"] == backend and report["split"] == "heldout" and report["problems"] == 4
    # the figures are those of the answers it kept, scored again here
    prompts = load_evaluation_set("builtin:instructions", 4, 0)
    assert isinstance(prompts, InstructionSet)
    rescored = score_answers(prompts.prompts, [(p["response"], p["finish_reason"]) for p in report["per_prompt"]])
    assert all(p["response"].strip() for p in report["per_prompt"])
    expected = figures([pass_counts(r) for r in rescored], seed=0)
    for key, measure in expected.items():
        assert report[key]["value"] == measure.value
    assert "prompt-level strict" in (out / "report.md").read_text()
    return report


@pytest.mark.model
def test_eval_task_on_instructions_with_smollm2(
    small_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _eval_through_cli("transformers", tmp_path, capsys)


@pytest.mark.model
@pytest.mark.vllm
def test_eval_task_on_instructions_through_vllm(
    small_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import psutil

    children = {p.pid for p in psutil.Process().children(recursive=True)}
    report = _eval_through_cli("vllm", tmp_path, capsys)
    assert report["settings"]["decoding"] == "greedy"
    # the engine core and its workers were shut down: nothing they started outlives the evaluation except
    # multiprocessing's resource tracker, which `spawn` starts once per Python process and keeps for its life
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in children and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline())]
    assert not left, [p.cmdline() for p in left]
