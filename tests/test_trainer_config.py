"""Trainer configs built one way from a `TrainingConfig`: the same fields for DPO, SparsePO and debias, the
device from the machine unless set, and every unknown or invalid setting a one-line error (no model loads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from trl import DPOConfig, ModelConfig

from configs.errors import ConfigError
from configs.schema import TrainingConfig
from tests.test_sparsepo_training import run_cli
from training.debias import DebiasConfig
from training.sparsepo import SparsePOConfig
from training.trainer_config import SHARED_FIELDS, machine_precision, trainer_config

SOURCE = "train.yaml"
TRAINERS = [(DPOConfig, "dpo"), (SparsePOConfig, "sparsepo"), (DebiasConfig, "debias")]


def build(cls: type[Any], tmp_path: Path, trainer: str = "sparsepo", **fields: Any) -> tuple[Any, ModelConfig]:
    return trainer_config(cls, TrainingConfig(**fields), str(tmp_path / "out"), source=SOURCE, trainer=trainer)


def error_of(cls: type[Any], tmp_path: Path, extra: dict[str, Any], trainer: str = "sparsepo") -> str:
    with pytest.raises(ConfigError) as err:
        build(cls, tmp_path, trainer, extra=extra)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{SOURCE}: "), message
    return message


def test_unknown_setting_is_named_with_the_closest_known_one(tmp_path: Path) -> None:
    message = error_of(SparsePOConfig, tmp_path, {"lora_rr": 4})
    assert message == f"{SOURCE}: field 'extra.lora_rr': unknown setting for sparsepo (did you mean lora_r?)"
    # A SparsePO knob is unknown to plain DPO and to the debiasing trainer.
    assert "field 'extra.mask_type': unknown setting for dpo" in error_of(
        DPOConfig, tmp_path, {"mask_type": "ones"}, "dpo"
    )
    assert "unknown setting for debias" in error_of(DebiasConfig, tmp_path, {"l1_u": 0.1}, "debias")


def test_invalid_values_are_one_line_naming_the_field(tmp_path: Path) -> None:
    assert "field 'extra.warmup_steps': Input should be a valid number" in error_of(
        SparsePOConfig, tmp_path, {"warmup_steps": "soon"}
    )
    assert "field 'extra.mask_type': Input should be 'learned', 'activation' or 'ones'" in error_of(
        SparsePOConfig, tmp_path, {"mask_type": "attention"}
    )
    # YAML reads an unquoted `no` as false: one problem for the field, not one per member of its union type.
    assert error_of(DebiasConfig, tmp_path, {"save_strategy": False}, "debias").endswith(
        "field 'extra.save_strategy': Input should be 'no', 'steps', 'epoch' or 'best' (got False)"
    )
    # Checks of the config dataclass itself (__post_init__) come through as one line too.
    assert error_of(SparsePOConfig, tmp_path, {"l1_u": -1}).endswith("l1_u must be >= 0; got -1.0")
    assert "loss_type must be 'sigmoid'" in error_of(SparsePOConfig, tmp_path, {"loss_type": ["ipo"]})
    assert "field 'extra.beta': set beta at the top level" in error_of(DPOConfig, tmp_path, {"beta": 0.5}, "dpo")
    assert "field 'extra.output_dir': the output folder comes from --out" in error_of(
        DPOConfig, tmp_path, {"output_dir": "elsewhere"}, "dpo"
    )
    assert "field 'extra.lora_r': LoRA settings need extra.use_peft=true" in error_of(
        SparsePOConfig, tmp_path, {"lora_r": 4}
    )


@pytest.mark.parametrize(("cls", "trainer"), TRAINERS)
def test_device_and_precision_come_from_this_machine(cls: type[Any], trainer: str, tmp_path: Path) -> None:
    args, _ = build(cls, tmp_path, trainer)
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        assert (args.use_cpu, args.bf16, args.fp16) == (False, bf16, not bf16)
    else:
        assert (args.use_cpu, args.bf16, args.fp16) == (True, False, False)


def test_explicit_device_and_precision_win(tmp_path: Path) -> None:
    on_cpu, _ = build(SparsePOConfig, tmp_path, extra={"use_cpu": True})
    assert (on_cpu.use_cpu, on_cpu.bf16, on_cpu.fp16) == (True, False, False)
    bf16, _ = build(SparsePOConfig, tmp_path, extra={"bf16": True})
    assert (bf16.use_cpu, bf16.bf16, bf16.fp16) == (not torch.cuda.is_available(), True, False)
    # Only what the config leaves unset is picked; setting fp16 stops bf16 being chosen beside it.
    assert machine_precision({"fp16": True, "use_cpu": False}) == {"bf16": False}
    assert machine_precision({"use_cpu": True}) == {"bf16": False, "fp16": False}


def test_one_training_config_builds_every_trainer_config_alike(tmp_path: Path) -> None:
    training = {
        "learning_rate": 3e-6,
        "beta": 0.25,
        "num_train_epochs": 2.0,
        "max_steps": 7,
        "per_device_train_batch_size": 3,
        "gradient_accumulation_steps": 2,
        "max_length": 64,
        "seed": 11,
        "extra": {"warmup_steps": 2, "dtype": "bfloat16", "model_init_kwargs": {"attn_implementation": "eager"}},
    }
    built = {trainer: build(cls, tmp_path, trainer, **training) for cls, trainer in TRAINERS}
    for cls, trainer in TRAINERS:
        args, model = built[trainer]
        assert type(args) is cls
        for name in SHARED_FIELDS:
            assert getattr(args, name) == training[name], (trainer, name)
        assert args.warmup_steps == 2 and args.output_dir == str(tmp_path / "out")
        # ModelConfig's dtype reaches the model loader; an explicit model_init_kwargs entry is kept beside it.
        assert model.dtype == "bfloat16"
        assert args.model_init_kwargs == {"dtype": "bfloat16", "revision": "main", "attn_implementation": "eager"}
    precision = {trainer: (a.use_cpu, a.bf16, a.fp16) for trainer, (a, _) in built.items()}
    assert len(set(precision.values())) == 1, precision
    # Each trainer's own defaults still apply where the config says nothing.
    assert built["sparsepo"][0].save_steps == 50 and built["dpo"][0].save_steps == 500
    assert built["debias"][0].save_strategy == "no" and built["debias"][0].grounding_weight == 1.0


def test_lora_settings_reach_the_peft_config(tmp_path: Path) -> None:
    from training.trainer_config import model_trainer_kwargs

    lora = {"use_peft": True, "lora_r": 4, "lora_target_modules": ["q_proj", "o_proj"]}
    _, model = build(SparsePOConfig, tmp_path, extra=lora)
    peft = model_trainer_kwargs(model)["peft_config"]
    assert peft.r == 4 and set(peft.target_modules) == {"q_proj", "o_proj"}
    _, plain = build(SparsePOConfig, tmp_path)
    assert model_trainer_kwargs(plain) == {"peft_config": None, "quantization_config": None}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["train", "sparsepo", "--data", "unused", "--set", "extra.lora_rr=4"],
            "train_sparsepo.yaml: field 'extra.lora_rr': unknown setting for sparsepo (did you mean lora_r?)",
        ),
        (
            ["train", "debias", "--data", "unused", "--labor-table", "unused.csv", "--set", "extra.grounding_wieght=2"],
            "train_debias.yaml: field 'extra.grounding_wieght': unknown setting for debias "
            "(did you mean grounding_weight?)",
        ),
    ],
)
def test_cli_exits_2_with_one_line(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, stderr = run_cli([*argv, "--out", str(tmp_path / "out")], capsys)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("prefsmith: error: "), stderr
    assert lines[0].endswith(expected), lines[0]
    assert not (tmp_path / "out").exists()


def test_every_trainer_is_built_by_name_through_one_registry(tmp_path: Path) -> None:
    """iterate, the CLI and Ray Train get a trainer by name; each checks its settings when built (before any model
    loads) with the config class it names, and says which evaluation measures it."""
    from tests.conftest import LABOR_DATA
    from training.train import load_trainer, trainer_class, trainers

    assert trainers() == ("dpo", "sparsepo", "debias")
    table = LABOR_DATA / "cpsaat11_2022_clean.csv"
    for cls, name in TRAINERS:
        trainer = load_trainer(name, TrainingConfig(max_steps=3), "no-such-export", tmp_path / name, labor_table=table)
        assert type(trainer.args) is cls and trainer.args.max_steps == 3 and trainer.name == name
        assert trainer.job.out_dir == str((tmp_path / name).resolve())
        assert trainer.summary_path == tmp_path / name / f"{name}_summary.json"
        assert trainer_class(name).evaluation == ("bias" if name == "debias" else "task")
    with pytest.raises(ConfigError, match=r"unknown trainer 'ppo' \(have: dpo, sparsepo, debias\)"):
        trainer_class("ppo")
    with pytest.raises(ConfigError, match="the debias trainer needs a labor table"):
        load_trainer("debias", TrainingConfig(), "x", tmp_path / "d")
    with pytest.raises(ConfigError, match="extra.mask_type"):
        load_trainer("sparsepo", TrainingConfig(extra={"mask_type": "attention"}), "x", tmp_path / "s")
