"""SparsePO end to end: training steps on an exported set (SmolLM2), checkpoints, resume, LoRA, the CLI
(`prefsmith train sparsepo`, `prefsmith inspect masks`) and config errors, on CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_sparsepo import PAIRS, save_tiny_llama, write_export
from training.masks import MASKS_WEIGHTS_NAME, TokenMaskNetworks


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_export(tmp_path_factory.mktemp("export"), PAIRS[:4])


@pytest.fixture(scope="module")
def tiny_model(small_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), small_model_path)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from pipelines.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def mean_loss(trainer: Any) -> float:
    """The SparsePO loss over every pair of the trainer's dataset, in eval mode."""
    trainer.model.eval()
    losses = []
    with torch.no_grad():
        for start in range(0, len(trainer.train_dataset), 2):
            rows = [trainer.train_dataset[i] for i in range(start, min(start + 2, len(trainer.train_dataset)))]
            batch = trainer._prepare_inputs(trainer.data_collator(rows))
            losses.append(trainer.compute_loss(trainer.model, batch).item())
    return sum(losses) / len(losses)


@pytest.mark.model
@pytest.mark.train
def test_training_steps_reduce_loss_and_write_loadable_checkpoint(
    small_model_path: Path, export_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from storage.preference_sets import load_preference_set
    from training.sparsepo import SparsePOTrainer
    from training.train import load_trainer_from_file

    out = tmp_path / "run"
    trainer = load_trainer_from_file(
        "sparsepo",
        "train_sparsepo",
        [
            f"model={small_model_path}",
            "max_steps=4",
            "learning_rate=2e-5",
            "beta=0.5",
            "max_length=96",
            "extra.save_steps=4",
            "extra.rw_kl_independent=true",
        ],
        str(export_dir),
        out,
    )
    summary = trainer.train()
    losses = [entry["loss"] for entry in summary.log_history if "loss" in entry]
    assert summary.global_step == 4 and len(losses) == 4
    # At step 1 the policy is the reference and the masks start ≈ 1 without L1: the loss is log 2 exactly.
    assert abs(losses[0] - math.log(2)) <= 1e-5
    masked_metrics = [entry for entry in summary.log_history if "masked_rewards/margins" in entry]
    assert masked_metrics and "mask/reward_nonzero" in masked_metrics[0] and "kl/chosen" in masked_metrics[0]

    checkpoint = out / "checkpoint-4"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / MASKS_WEIGHTS_NAME).is_file()
    # vLLM loads every top-level *.safetensors of a model folder as the model's weights: only the model's there
    assert [f.name for f in checkpoint.glob("*.safetensors")] == ["model.safetensors"]
    assert (checkpoint / "optimizer.pt").is_file() and (checkpoint / "trainer_state.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    masks = TokenMaskNetworks.from_pretrained(checkpoint)
    assert masks.independent and masks.kl is not None
    # The masks trained: they moved away from their ≈1 initialisation.
    untouched = TokenMaskNetworks(masks.num_layers, masks.hidden_size, independent=True)
    assert not torch.allclose(masks.reward.layer_bias, untouched.reward.layer_bias)

    # The reloaded policy, scored with the reloaded masks against the original reference, beats log 2.
    trained = SparsePOTrainer(
        model=reloaded,
        ref_model=AutoModelForCausalLM.from_pretrained(str(small_model_path), dtype=torch.float32),
        args=trainer.args,
        train_dataset=load_preference_set(str(export_dir)),
        processing_class=AutoTokenizer.from_pretrained(str(checkpoint)),
        mask_networks=masks,
    )
    assert mean_loss(trained) < math.log(2) - 0.05


@pytest.mark.model
@pytest.mark.train
def test_lora_trains_and_saves_masks_with_the_adapter(tiny_model: Path, export_dir: Path, tmp_path: Path) -> None:
    from training.train import load_trainer_from_file

    out = tmp_path / "lora"
    trainer = load_trainer_from_file(
        "sparsepo",
        "train_sparsepo",
        [
            f"model={tiny_model}",
            "max_steps=2",
            "learning_rate=1e-2",
            "extra.save_steps=2",
            "extra.use_peft=true",
            "extra.lora_r=4",
        ],
        str(export_dir),
        out,
    )
    summary = trainer.train()
    assert summary.global_step == 2
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    masks = TokenMaskNetworks.from_pretrained(out)
    fresh = TokenMaskNetworks(masks.num_layers, masks.hidden_size, independent=False)
    # lr 1e-2 for two steps: the mask parameters moved, so they were in the optimizer with the adapter.
    assert (masks.reward.layer_bias - fresh.reward.layer_bias).abs().max().item() > 1e-3
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4


@pytest.mark.model
@pytest.mark.train
def test_cli_trains_resumes_and_inspects_masks(
    tiny_model: Path, export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    base = ["train", "sparsepo", "--data", str(export_dir), "--out", str(out), "--set", f"model={tiny_model}"]
    # A constant schedule: a linear one saved at max_steps=2 would resume at learning rate 0.
    base += [
        "--set",
        "learning_rate=1e-2",
        "--set",
        "extra.mask_weight_decay=0",
        "--set",
        "extra.lr_scheduler_type=constant",
    ]
    code, stdout, stderr = run_cli([*base, "--set", "max_steps=2", "--set", "extra.save_steps=2"], capsys)
    assert code == 0, stderr
    assert "trained 2 steps" in stdout and (out / "checkpoint-2" / MASKS_WEIGHTS_NAME).is_file()
    first = TokenMaskNetworks.from_pretrained(out / "checkpoint-2").state_dict()

    code, stdout, stderr = run_cli([*base, "--set", "max_steps=3", "--set", "extra.save_steps=3"], capsys)
    assert code == 0, stderr
    assert "trained 3 steps (resumed from" in stdout and "checkpoint-2" in stdout
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    # Resuming restores the masks exactly as checkpoint-2 saved them (not a fresh initialisation).
    from training.train import load_trainer_from_file

    trainer = load_trainer_from_file(
        "sparsepo", "train_sparsepo", [f"model={tiny_model}"], str(export_dir), tmp_path / "x"
    ).build()
    assert any(not torch.equal(v, first[k]) for k, v in trainer.mask_networks.state_dict().items())
    trainer._load_from_checkpoint(str(out / "checkpoint-2"))
    for key, value in trainer.mask_networks.state_dict().items():
        assert torch.equal(value, first[key]), key

    code, stdout, stderr = run_cli(
        ["inspect", "masks", "--model", str(out), "--data", str(export_dir), "--pairs", "2"], capsys
    )
    assert code == 0, stderr
    page = (out / "masks.html").read_text()
    assert page.count("<h2>Pair") == 2 and "title='" in page
    from PIL import Image

    with Image.open(out / "masks.png") as image:
        assert image.size[0] == 1000 and image.size[1] > 50


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("extra.mask_typo=1", "field 'extra.mask_typo': unknown setting for sparsepo (did you mean mask_type?)"),
        ("extra.mask_type=attention", "field 'extra.mask_type'"),
        ("extra.l1_u=-1", "l1_u must be >= 0"),
        ("extra.lora_r=4", "field 'extra.lora_r': LoRA settings need extra.use_peft=true"),
        ("beta=0", "field 'beta'"),
    ],
)
def test_cli_rejects_bad_settings_on_one_line(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, expected: str
) -> None:
    argv = ["train", "sparsepo", "--data", str(export_dir), "--out", str(tmp_path), "--set", override]
    code, _, stderr = run_cli(argv, capsys)
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prefsmith: error: ") and expected in lines[0]
    assert "train_sparsepo.yaml" in lines[0]
