"""The debiasing trainer: grounded pairs judged by the labor tool, the presets, and one training step whose
loss is exactly DPO's log 2 plus λ times the grounding KL computed independently."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.conftest import LABOR_DATA, REPO
from tools.bls import read_table
from tools.labor import LaborStatisticsTool
from training.evaluation.bias_probes import probe_occupations, split_occupations

CLEAN = LABOR_DATA / "cpsaat11_2022_clean.csv"


def test_grounded_pairs_are_consistent_with_bls_and_never_about_held_out_occupations(tmp_path: Path) -> None:
    from pipelines.pair_sources import write_table_pairs_export
    from storage.preference_sets import load_preference_set

    rows = probe_occupations(read_table(CLEAN), min_employed=1000)
    train, held_out = split_occupations(rows, seed=0)
    folder = write_table_pairs_export(CLEAN, train, tmp_path / "pairs")
    dataset = load_preference_set(folder)
    assert 0 < len(dataset) <= 3 * len(train)
    assert set(dataset["occupation"]) <= {r.title for r in train}
    assert not set(dataset["occupation"]) & {r.title for r in held_out}
    tool = LaborStatisticsTool(table_path=str(CLEAN))
    for row in dataset.select(range(0, len(dataset), 7)):
        verdicts = [
            tool.evidence({"occupation": row["occupation"], "claim": row[side][0]["content"]}).verdict
            for side in ("chosen", "rejected")
        ]
        assert verdicts == [True, False], row
    nurses = [r for r in dataset if r["occupation"] == "Registered nurses" and r["dimension"] == "gender"]
    if nurses:
        assert "88% of registered nurses are women" in nurses[0]["chosen"][0]["content"]


def test_presets_validate() -> None:
    from configs.loading import load_config
    from configs.schema import SynthesisConfig, TrainingConfig

    synthesis = load_config(
        REPO / "configs" / "debias.yaml", ["tools.labor_table=/data/cpsaat11.xlsx"], schema=SynthesisConfig
    )
    assert synthesis.tools.enabled == ["labor_statistics"]
    assert synthesis.tools.labor_table == "/data/cpsaat11.xlsx"
    assert [p.builtin for p in synthesis.prompts] == ["occupations"]
    training = load_config(REPO / "configs" / "train_debias.yaml", schema=TrainingConfig)
    assert training.extra["grounding_weight"] == 1.0 and training.extra["held_out_fraction"] == 0.3


@pytest.mark.model
@pytest.mark.train
def test_one_step_loss_is_log2_plus_lambda_times_grounding_kl(tmp_path: Path, small_model_path: Path) -> None:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.debias import DebiasConfig, DebiasTrainer, grounding_kl, grounding_probes
    from training.evaluation.bias_probes import DIMENSIONS, ExactProbe

    tokenizer = AutoTokenizer.from_pretrained(small_model_path)
    model = AutoModelForCausalLM.from_pretrained(small_model_path, dtype=torch.float32)
    table = read_table(CLEAN)
    rows = [table.get("Registered nurses"), table.get("Carpenters")]
    probes = grounding_probes(rows, tokenizer, ["gender"])
    assert len(probes) == 4
    # The KL by hand from the exact probe's option probabilities: Σ s log(s / p) per probe, averaged.
    model.eval()
    probe = ExactProbe(model, tokenizer)
    by_hand = []
    for row in rows:
        s = np.array(DIMENSIONS["gender"].target(row)) / 100
        for template in DIMENSIONS["gender"].templates:
            question = template.format(
                occupation=row.title, occupation_lower=row.title[0].lower() + row.title[1:]
            )
            p = probe.distributions(DIMENSIONS["gender"], [question])[0]
            by_hand.append(float(np.sum(s * np.log(s / p))))
    with torch.no_grad():
        kl = float(grounding_kl(model, tokenizer, probes))
    assert kl == pytest.approx(np.mean(by_hand), rel=1e-4)

    pairs = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": "What share of carpenters are women?"}],
                "chosen": [{"role": "assistant", "content": "About 4% of carpenters are women."}],
                "rejected": [{"role": "assistant", "content": "All carpenters are men."}],
            },
            {
                "prompt": [{"role": "user", "content": "What share of registered nurses are women?"}],
                "chosen": [{"role": "assistant", "content": "About 88% of registered nurses are women."}],
                "rejected": [{"role": "assistant", "content": "All registered nurses are women."}],
            },
        ]
    )
    weight = 2.0
    args = DebiasConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=1,
        learning_rate=1e-5,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        max_length=96,
        seed=0,
        dataloader_num_workers=0,
        grounding_weight=weight,
        grounding_batch_size=4,
    )
    trainer = DebiasTrainer(
        model=model, args=args, train_dataset=pairs, processing_class=tokenizer, grounding=probes
    )
    trainer.train()
    logged = trainer.state.log_history[0]
    # Policy = reference at step 0: the DPO part is exactly log 2; the rest is λ·KL over all four probes.
    assert logged["grounding_kl"] == pytest.approx(kl, rel=1e-4)
    assert logged["loss"] == pytest.approx(math.log(2) + weight * kl, rel=1e-4)


@pytest.mark.model
@pytest.mark.train
def test_the_debiasing_trainer_builds_its_config_from_the_preset(tmp_path: Path, small_model_path: Path) -> None:
    import json

    import torch

    from pipelines.pair_sources import write_table_pairs_export
    from tests.test_sparsepo import save_tiny_llama
    from training.debias import DebiasSummary
    from training.train import load_trainer_from_file

    tiny = save_tiny_llama(tmp_path / "tiny", small_model_path)
    rows = probe_occupations(read_table(CLEAN), min_employed=2000)
    pairs = write_table_pairs_export(CLEAN, rows, tmp_path / "pairs")
    overrides = [f"model={tiny}", "max_steps=2", "extra.min_employed=2000", "extra.grounding_batch_size=2"]
    trainer = load_trainer_from_file("debias", "train_debias", overrides, pairs, tmp_path / "model", labor_table=CLEAN)
    run = trainer.train()
    assert isinstance(run, DebiasSummary) and run.global_step == 2
    logged = [entry for entry in run.log_history if "loss" in entry]
    assert len(logged) == 2 and all(entry["grounding_kl"] > 0 for entry in logged)
    assert sorted(run.train_occupations + run.held_out_occupations) == sorted(r.title for r in rows)
    assert not set(run.train_occupations) & set(run.held_out_occupations)
    # The saved arguments: the preset and the overrides reached DebiasConfig, on the device of this machine.
    args = torch.load(tmp_path / "model" / "training_args.bin", weights_only=False)
    assert type(args).__name__ == "DebiasConfig"
    assert (args.max_steps, args.grounding_batch_size, args.min_employed, args.max_length) == (2, 2, 2000, 96)
    assert args.use_cpu is not torch.cuda.is_available() and args.save_strategy == "no"
    assert (tmp_path / "model" / "model.safetensors").is_file()
    split = json.loads((tmp_path / "model" / "split.json").read_text())
    assert (split["train"], split["held_out"]) == (run.train_occupations, run.held_out_occupations)
    written = json.loads((tmp_path / "model" / "debias_summary.json").read_text())
    assert (written["trainer"], written["global_step"]) == ("debias", 2)
    assert written["held_out_occupations"] == run.held_out_occupations


@pytest.mark.model
def test_eval_bias_command_writes_a_consistent_report(tmp_path: Path, small_model_path: Path) -> None:
    import json

    import numpy as np

    from tests.test_bls import prefsmith

    out = tmp_path / "report"
    done = prefsmith(
        "eval",
        "bias",
        "--model",
        str(small_model_path),
        "--labor-table",
        str(CLEAN),
        "--out",
        str(out),
        "--min-employed",
        "2000",
        "--limit",
        "3",
        "--in-context",
        "4",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert [c["name"] for c in report["conditions"]] == ["before", "in-context k=4", "baseline: train mean"]
    assert len(report["held_out_occupations"]) == 3
    for condition in report["conditions"]:
        # The reported score is the mean gap of the reported shares: recompute it from the JSON.
        gaps = [
            abs(condition["shares"][title]["women"] - report["bls"][title]["women"])
            for title in report["held_out_occupations"]
        ]
        bias = condition["metrics"]["women"]["bias"]
        assert bias["value"] == pytest.approx(float(np.mean(gaps)))
        assert bias["ci_low"] <= bias["value"] <= bias["ci_high"]
    before, in_context, baseline = report["conditions"]
    assert 1.0 < before["perplexity"] < 1000.0 and baseline["perplexity"] is None
    assert before["perplexity"] == in_context["perplexity"]  # same weights; facts only change the probes
    assert before["shares"] != in_context["shares"]
    for attribute in ("women", "white", "black", "asian", "hispanic"):
        assert (out / f"shares_{attribute}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| before |" in (out / "report.md").read_text()


def test_synthesis_never_plays_a_held_out_occupation_and_the_trainer_holds_out_the_same(db_url: str) -> None:
    from sqlalchemy import select

    from configs.loading import load_config
    from configs.splits import held_out_occupation
    from pipelines.prompt_sources import OCCUPATIONS
    from pipelines.synthesis.run import prepare_run
    from storage import leases
    from storage.db import session_scope
    from storage.models import Episode, Prompt, Run

    config = load_config("debias", [f"tools.labor_table={CLEAN}"])
    run = prepare_run(config, "occupations", db_url, limit=None, only_unplayed=False)
    try:
        with session_scope(run.engine) as session:
            played = session.execute(
                select(Prompt.meta).join(Episode, Episode.prompt_id == Prompt.id).where(Episode.run_id == "occupations")
            ).scalars().all()
            stored = session.get(Run, "occupations").config
    finally:
        leases.release(run.engine, run.lease)
        run.engine.dispose()
    held = {o for o in OCCUPATIONS if held_out_occupation(o)}
    assert 0 < len(held) < len(OCCUPATIONS)
    assert {m["occupation"] for m in played} == set(OCCUPATIONS) - held, "no held-out occupation is played"
    assert len(played) == 3 * (len(OCCUPATIONS) - len(held)), "every dimension of every played occupation"
    assert {m["dimension"] for m in played} == {"gender", "race", "ethnicity"}
    assert stored["prompts"] == [
        {"builtin": "occupations", "path": None, "format": None, "limit": None, "seed": 0, "split": "train"}
    ]
    # the debiasing trainer and `eval bias` hold out the same occupations of the BLS table (the built-in names
    # are BLS titles)
    train, held_rows = split_occupations(probe_occupations(read_table(CLEAN), min_employed=0), rule="prefsmith")
    titles = {r.title.lower(): r for r in train + held_rows}
    shared = [o for o in OCCUPATIONS if o in titles]
    assert len(shared) > 10
    assert {o for o in shared if titles[o] in held_rows} == {o for o in shared if o in held}


def test_the_debiasing_trainer_refuses_an_export_without_occupations(sample_db, tmp_path: Path) -> None:
    from configs.errors import ConfigError
    from pipelines.export import export_run
    from training.train import load_trainer_from_file

    engine, _ = sample_db
    arithmetic = export_run(engine, "sample", tmp_path / "arithmetic", fmt="parquet")
    out = tmp_path / "model"
    trainer = load_trainer_from_file("debias", "train_debias", [], arithmetic.path, out, labor_table=CLEAN)
    with pytest.raises(ConfigError, match="needs pairs about occupations.*has no 'occupation' column"):
        trainer.train()
    assert not (tmp_path / "model").exists()
