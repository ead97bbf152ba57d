"""One way to build a trainer's config: a `TrainingConfig` (YAML + `--set`) becomes any TRL config dataclass
(`DPOConfig`, `SparsePOConfig`, `DebiasConfig`) and TRL's `ModelConfig`, on the device this machine has.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from pydantic import ConfigDict, ValidationError, create_model
from transformers import HfArgumentParser
from transformers.hf_argparser import DataClassType
from trl import DPOConfig, ModelConfig, get_peft_config, get_quantization_config

from configs.errors import ConfigError
from configs.loading import format_validation_error
from configs.schema import TrainingConfig

ArgsT = TypeVar("ArgsT", bound=DPOConfig)

# TrainingConfig's own fields, which every TRL config also has: they are set at the top level of the YAML.
SHARED_FIELDS = (
    "learning_rate",
    "beta",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "seed",
)
# Config fields prefsmith fills in itself, with where their value comes from.
_FILLED_IN = {
    "output_dir": "the output folder comes from --out",
    "model_name_or_path": "the model comes from 'model' at the top level",
}
# ModelConfig's LoRA knobs, which do nothing unless use_peft is on.
_PEFT_FIELDS = (
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_target_parameters",
    "lora_modules_to_save",
    "lora_task_type",
    "use_rslora",
    "use_dora",
)


def trainer_config(
    cls: type[ArgsT], training: TrainingConfig, output_dir: str, *, source: str, trainer: str
) -> tuple[ArgsT, ModelConfig]:
    """`cls` and TRL's `ModelConfig` from `training`: its shared fields, then `extra` (any field of either).

    `use_cpu`, `bf16` and `fp16` come from `machine_precision` unless `extra` sets them. The model-loading
    settings (dtype, revision, attention) go into `model_init_kwargs` under any that `extra` sets there.
    Every unknown or invalid setting is a `ConfigError` naming `extra.<field>`; `source` names the file and
    `trainer` the trainer in the message.
    """
    extra = _validated_extra(cls, training.extra, source, trainer)
    if not extra.get("use_peft", False):
        set_without_peft = [key for key in _PEFT_FIELDS if key in extra]
        if set_without_peft:
            raise ConfigError(f"{source}: field 'extra.{set_without_peft[0]}': LoRA settings need extra.use_peft=true")
    values: dict[str, Any] = {
        "output_dir": output_dir,
        **{name: getattr(training, name) for name in SHARED_FIELDS},
        **machine_precision(extra),
        **extra,
    }
    try:
        parser = HfArgumentParser([DataClassType(cls), DataClassType(ModelConfig)])
        args, model = parser.parse_dict(values, allow_extra_keys=False)
    except ValueError as exc:
        # The dataclasses' own checks (__post_init__): their messages name the field they reject.
        raise ConfigError(f"{source}: {' '.join(str(exc).split())}") from None
    args.model_init_kwargs = {**model_init_kwargs(model), **(args.model_init_kwargs or {})}
    return args, model


def machine_precision(explicit: Mapping[str, Any]) -> dict[str, bool]:
    """`use_cpu`, `bf16` and `fp16` for this machine, for those `explicit` leaves unset.

    A CUDA GPU trains in bf16 mixed precision where it supports it, else fp16; without one, training runs on
    the CPU in full precision. Setting either of bf16 / fp16 switches off the other one's automatic choice.
    """
    cuda = torch.cuda.is_available()
    use_cpu = bool(explicit.get("use_cpu", not cuda))
    if "bf16" in explicit or "fp16" in explicit or use_cpu or not cuda:
        picked = {"use_cpu": use_cpu, "bf16": False, "fp16": False}
    else:
        bf16 = torch.cuda.is_bf16_supported()
        picked = {"use_cpu": use_cpu, "bf16": bf16, "fp16": not bf16}
    return {key: value for key, value in picked.items() if key not in explicit}


def model_init_kwargs(model: ModelConfig) -> dict[str, Any]:
    """How the trainer loads a model given by name: dtype, revision and attention of `model`."""
    return {"dtype": model.dtype, "revision": model.model_revision, "attn_implementation": model.attn_implementation}


def model_trainer_kwargs(model: ModelConfig) -> dict[str, Any]:
    """The trainer arguments `model` asks for (TRL's recipe): a LoRA adapter, a quantized base model."""
    return {"peft_config": get_peft_config(model), "quantization_config": get_quantization_config(model)}


def _validated_extra(cls: type[DPOConfig], extra: Mapping[str, Any], source: str, trainer: str) -> dict[str, Any]:
    """`extra` checked against the fields of `cls` and `ModelConfig`, values coerced to the fields' types."""
    for key in extra:
        if key in SHARED_FIELDS:
            raise ConfigError(f"{source}: field 'extra.{key}': set {key} at the top level, not under extra")
        if key in _FILLED_IN:
            raise ConfigError(f"{source}: field 'extra.{key}': {_FILLED_IN[key]}")
    settable = _settable_fields(cls)
    # A model of only the fields present: unknown keys are its extra inputs, and the others keep their
    # dataclass defaults because they are never set.
    fields: dict[str, Any] = {key: (settable[key], None) for key in extra if key in settable}
    checker = create_model(
        f"{cls.__name__}Extra", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields
    )
    try:
        checked = checker.model_validate(dict(extra))
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(
                source, exc, prefix=("extra",), known=settable, unknown=f"unknown setting for {trainer}", depth=1
            )
        ) from None
    return {key: getattr(checked, key) for key in extra}


def _settable_fields(cls: type[DPOConfig]) -> dict[str, Any]:
    """Field name → type of every init field of `cls` and `ModelConfig` a config may set under `extra`."""
    settable: dict[str, Any] = {}
    for kind in (ModelConfig, cls):
        hints = typing.get_type_hints(kind)
        settable |= {f.name: hints[f.name] for f in dataclasses.fields(kind) if f.init}
    for name in (*SHARED_FIELDS, *_FILLED_IN):
        settable.pop(name, None)
    return settable
