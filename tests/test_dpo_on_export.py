"""An export written by `prefsmith export` trains plain `trl.DPOTrainer` for one step on SmolLM2 (CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from storage.migrate import open_database
from tests.sample_run import store_sample_run
from tests.test_cli import prefsmith

pytestmark = [pytest.mark.model, pytest.mark.train]


def test_plain_dpo_trainer_consumes_an_export(tmp_path: Path, small_model_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from configs.loading import load_config
    from configs.schema import TrainingConfig
    from storage.preference_sets import load_preference_set
    from training.trainer_config import trainer_config

    db = f"sqlite:///{tmp_path / 'dpo.db'}"
    engine = open_database(db, migrate=True)
    store_sample_run(engine, "dpo", n_prompts=5)
    engine.dispose()
    out = tmp_path / "export"
    done = prefsmith("export", "--run", "dpo", "--out", str(out), "--db", db)
    assert done.returncode == 0, done.stderr

    dataset = load_preference_set("dpo@v1", db_url=db)
    assert len(dataset) == 4
    tokenizer = AutoTokenizer.from_pretrained(small_model_path)
    model = AutoModelForCausalLM.from_pretrained(small_model_path, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "layers.0.self_attn.q_proj" in n}
    # configs/train_dpo.yaml through the one builder every trainer's config goes through.
    training = load_config(
        "train_dpo",
        ["max_steps=1", "learning_rate=1e-5", "max_length=128", "extra.save_strategy='no'", "extra.logging_steps=1"],
        schema=TrainingConfig,
    )
    args, _ = trainer_config(DPOConfig, training, str(tmp_path / "dpo-out"), source="train_dpo", trainer="dpo")
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 1
    logged = trainer.state.log_history[0]
    # Policy = reference at step 0, so the first DPO loss is exactly log 2.
    assert math.isclose(logged["loss"], math.log(2), abs_tol=1e-4), logged
    changed = any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    assert changed, "one optimizer step must move the policy"
