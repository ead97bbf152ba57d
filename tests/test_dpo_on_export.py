"""An export written by `prefsmith export` trains plain `trl.DPOTrainer` for one step on SmolLM2 (CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from storage.migrate import open_database, upgrade
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


@pytest.mark.parametrize("trainer", ["dpo", "sparsepo"])
def test_iterate_trainers_leave_a_whole_model_even_with_lora(
    tmp_path: Path, small_model_path: Path, trainer: str
) -> None:
    """`prefsmith iterate` trains through the trainer registry and merges the adapter: whatever the trainer, and
    with a LoRA adapter, the folder it leaves is a whole model the next round's engine loads."""
    from transformers import AutoModelForCausalLM

    from configs.loading import load_config
    from configs.schema import TrainingConfig
    from pipelines.export import export_run
    from tests.test_sparsepo import save_tiny_llama
    from training.train import load_trainer, merge_adapter

    url = f"sqlite:///{tmp_path / 'run.db'}"
    upgrade(url)
    engine = open_database(url)
    store_sample_run(engine, "sample", n_prompts=4)
    export = export_run(engine, "sample", tmp_path / "export", fmt="parquet")
    engine.dispose()
    tiny = save_tiny_llama(tmp_path / "tiny", small_model_path)
    training = load_config(
        f"train_{trainer}",
        [f"model={tiny}", "max_steps=1", "extra.use_peft=true", "extra.lora_r=4", "extra.lora_alpha=8",
         "extra.lora_target_modules=[q_proj, v_proj]"],
        schema=TrainingConfig,
    )
    out = tmp_path / "model"
    summary = load_trainer(trainer, training, str(export.path), out).train()
    assert (summary.trainer, summary.global_step) == (trainer, 1)
    assert json.loads((out / f"{trainer}_summary.json").read_text())["global_step"] == 1
    assert (out / "adapter_config.json").exists(), "the trainer saves the adapter it trained"
    merge_adapter(out)
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    base = AutoModelForCausalLM.from_pretrained(str(tiny))
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert merged.config.num_hidden_layers == base.config.num_hidden_layers
