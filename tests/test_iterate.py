"""`prefsmith iterate` on the real stack: local Ray, SmolLM2 as every player, TRL's DPOTrainer, PostgreSQL.

Two rounds on a tiny set of easy sums: killed with SIGKILL right after round 1's export, then rerun; the rerun
repeats no finished stage, both checkpoints are registered with their lineage, and round 2 plays with round 1's
checkpoint as its target.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.db import session_scope
from storage.lineage import finished_stages, lineage
from storage.migrate import open_database
from storage.models import Export, IterationStage, Round
from storage.preference_sets import load_preference_set
from storage.queries import run_target_model
from tests.test_faults import Synthesizer, _rounds, _wait_for
from tests.test_synthesis import EASY, write_prompts

pytestmark = [pytest.mark.model, pytest.mark.ray, pytest.mark.train, pytest.mark.postgres]

BASE = "smollm2-135m-instruct"


class Iteration(Synthesizer):
    """One `prefsmith iterate` process with a local Ray and a PREFSMITH_HOME of its own."""

    def __init__(self, config: Path, url: str, home: Path, eval_file: Path) -> None:
        super().__init__(config, url, "unused")
        self.command = [
            *self.command[:3],
            "iterate",
            "--config",
            str(config),
            "--db",
            url,
            "--rounds",
            "2",
            "--name",
            "loop",
            "--trainer",
            "dpo",
            "--train-set",
            "max_steps=2",
            "--eval-prompts",
            str(eval_file),
            "--eval-samples",
            "2",
            "--eval-max-tokens",
            "12",
        ]
        self.env["PREFSMITH_HOME"] = str(home)


def _setup(tmp_path: Path, small_model_path: Path) -> tuple[Path, Path, Path]:
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    # the prepared model, shared with the other tests rather than converted again
    os.symlink(small_model_path, home / "models" / small_model_path.name)
    prompts, held = tmp_path / "prompts.jsonl", tmp_path / "heldout.jsonl"
    write_prompts(prompts, EASY)
    write_prompts(held, [(f"What is {a} + {b}? Answer with the number.", a + b) for a, b in [(1, 2), (5, 3), (6, 1)]])
    config = tmp_path / "synth.yaml"
    config.write_text(f"""
models:
  default: {{name: {BASE}, backend: transformers, dtype: float32, threads: 1}}
sampling: {{temperature: 1.0, top_p: 0.95, max_tokens: 12, seed: 1}}
game: {{candidates: 4, max_rounds: 1, accept_threshold: 8}}
tools: {{enabled: [reference_answer, calculator]}}
prompts: [{{path: {prompts}}}]
ray: {{num_cpus: 2, episodes_in_flight: 10}}
""")
    return config, home, held


def _stages(url: str) -> dict[tuple[int, str], object]:
    engine = open_database(url)
    try:
        with session_scope(engine) as session:
            return {
                (s.round, s.stage): s.finished_at
                for s in session.execute(select(IterationStage).where(IterationStage.iteration == "loop")).scalars()
            }
    finally:
        engine.dispose()


def test_two_rounds_killed_between_stages_resume_without_repeating_and_register_lineage(
    tmp_path: Path, small_model_path: Path, fresh_postgres_url: str
) -> None:
    url = fresh_postgres_url
    config, home, held = _setup(tmp_path, small_model_path)
    first = Iteration(config, url, home, held).start()
    try:
        assert _wait_for(lambda: "round 1 export: done" in first.err(), 600, first), first.err()[-3000:]
    finally:
        first.kill()
    before = _stages(url)
    assert {(0, "evaluate"), (1, "synthesize"), (1, "export")} <= set(before), before
    assert (2, "synthesize") not in before
    rounds_r1 = _rounds(url, "loop-r1")

    again = Iteration(config, url, home, held)
    code = again.run(900)
    log = again.err()
    assert code == 0, log[-4000:]
    for done in ("round 0 evaluate", "round 1 synthesize", "round 1 export"):
        assert f"{done}: finished before, not repeated" in log
    after = _stages(url)
    assert {k: after[k] for k in before} == before, "no finished stage was played again"
    assert set(after) == {(0, "start"), (0, "evaluate")} | {
        (r, s) for r in (1, 2) for s in ("synthesize", "export", "train", "evaluate")
    }
    assert _rounds(url, "loop-r1") == rounds_r1, "round 1's synthesis played nothing more"

    engine = open_database(url)
    try:
        with session_scope(engine) as session:
            assert session.execute(select(Export.id).where(Export.run_id == "loop-r1")).scalars().all() == [
                "loop-r1@v1"
            ], "one export of round 1"
            assert run_target_model(session, "loop-r1") == BASE
            assert run_target_model(session, "loop-r2") == "loop-r1", "round 2 plays round 1's checkpoint"
            chain = lineage(session, "loop-r2")
            assert [c["name"] for c in chain] == ["loop-r2", "loop-r1"]
            r2, r1 = chain
            assert (r1["base_model"], r1["parent"], r1["export_id"], r1["trainer"]) == (BASE, None, "loop-r1@v1", "dpo")
            assert (r2["base_model"], r2["parent"], r2["export_id"]) == ("loop-r1", "loop-r1", "loop-r2@v1")
            assert r1["config_hash"] != r2["config_hash"], "each trained from its own policy"
            for c in chain:
                measures = c["eval"][str(held)]
                assert set(measures) == {"sampled_accuracy", "greedy_accuracy", "answer_ranking"}
                assert Path(c["path"], "model.safetensors").is_file()
                assert not list(Path(c["path"]).glob("checkpoint-*")), "trainer states removed once trained"
            stages = finished_stages(session, "loop")
            assert stages[(2, "train")]["checkpoint"] == "loop-r2"
            assert session.execute(select(Round.id)).first() is not None
    finally:
        engine.dispose()
    folder = home / "iterations" / "loop"
    rows = json.loads((folder / "rounds.json").read_text())
    assert [r["model"] for r in rows] == [BASE, "loop-r1", "loop-r2"]
    assert (folder / "rounds.png").stat().st_size > 0 and (folder / "r2" / "eval" / "report.json").is_file()
    assert "loop-r2" in log and "answer ranking" in log, "the per-round table is printed"
    other = Iteration(config, url, home, held)
    other.command = [*other.command, "--train-set", "learning_rate=1e-5"]
    assert other.run(120) == 2 and "was started with other settings" in other.err(), other.err()[-2000:]
    listed = Iteration(config, url, home, held)
    listed.command = [*listed.command[:3], "models", "list", "--db", url]
    assert listed.run(120) == 0
    assert "loop-r2  (checkpoint: dpo from loop-r1 on export loop-r2@v1" in listed.err()


def test_a_debiasing_round_trains_on_synthesized_occupation_pairs_and_is_measured_on_held_out_ones(
    tmp_path: Path, small_model_path: Path
) -> None:
    """`iterate --trainer debias`: occupation prompts played with the labor tool, the export (with occupation and
    dimension) trained on by the debiasing trainer, and the checkpoint's bias measured on held-out occupations."""
    from tests.conftest import LABOR_DATA

    table = LABOR_DATA / "cpsaat11_2022_clean.csv"
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    os.symlink(small_model_path, home / "models" / small_model_path.name)
    url = f"sqlite:///{tmp_path / 'debias.db'}"
    loop = Iteration(tmp_path / "unused.yaml", url, home, tmp_path / "unused.jsonl")
    loop.command = [
        *loop.command[:3], "iterate", "--config", "debias", "--db", url, "--rounds", "1", "--name", "fair",
        "--set", f"tools.labor_table={table}", "--set", "prompts=[{builtin: occupations, limit: 6}]",
        "--set", "game.candidates=2", "--set", "game.max_rounds=1", "--set", "game.accept_threshold=1",
        "--set", "sampling.max_tokens=48", "--trainer", "debias", "--labor-table", str(table),
        "--train-set", "max_steps=2", "--train-set", "extra.min_employed=0", "--train-set",
        "extra.grounding_batch_size=2", "--eval-limit", "3",
    ]  # fmt: skip
    assert loop.run(600) == 0, loop.err()[-4000:]
    engine = open_database(url)
    try:
        with session_scope(engine) as session:
            (checkpoint,) = lineage(session, "fair-r1")
            stages = finished_stages(session, "fair")
    finally:
        engine.dispose()
    assert (checkpoint["trainer"], checkpoint["base_model"], checkpoint["export_id"]) == ("debias", BASE, "fair-r1@v1")
    measured = checkpoint["eval"][str(table)]
    assert set(measured) == {"bias_overall", "bias_women", "bias_white", "bias_black", "bias_asian", "bias_hispanic"}
    for r in (0, 1):
        figures = stages[(r, "evaluate")]
        assert figures["split"] == "heldout" and figures["problems"] == 3 and figures["perplexity"] > 1
        low, high = figures["bias_overall"]["ci95"]
        assert low <= figures["bias_overall"]["value"] <= high
    pairs = load_preference_set(stages[(1, "export")]["path"])
    assert len(pairs) == stages[(1, "export")]["pairs"] > 0
    assert set(pairs["dimension"]) <= {"gender", "race", "ethnicity"} and all(pairs["occupation"])
    assert "bias overall" in loop.err(), "the per-round table names the bias measures"
