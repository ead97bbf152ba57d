"""An export written by `prefsmith export` trains plain `trl.DPOTrainer` for one step on SmolLM2 (CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from storage.migrate import open_database
from tests.sample_run import store_sample_run
from tests.test_cli import prefsmith


def test_plain_dpo_trainer_consumes_an_export(tmp_path: Path, small_model_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from pipelines.export import load_preference_set

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
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo-out"), per_device_train_batch_size=2, max_steps=1, learning_rate=1e-5,
        bf16=False, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, max_length=128,
        seed=0, dataloader_num_workers=0,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 1
    logged = trainer.state.log_history[0]
    # Policy = reference at step 0, so the first DPO loss is exactly log 2.
    assert math.isclose(logged["loss"], math.log(2), abs_tol=1e-4), logged
    changed = any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    assert changed, "one optimizer step must move the policy"
