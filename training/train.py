"""SparsePO training entry points: a validated job (config + export + output folder), run in one process or
on Ray Train workers (`TorchTrainer` with the Hugging Face integration); both checkpoint and resume alike.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from configs.errors import ConfigError
from configs.schema import Strict, TrainingConfig

# Fields of TrainingConfig that map one-to-one onto DPOConfig / TrainingArguments.
_SHARED_FIELDS = (
    "learning_rate",
    "beta",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "seed",
)


class SparsePOSettings(Strict):
    """The `extra:` section of configs/train_sparsepo.yaml: SparsePO's knobs and a few run knobs.

    Validated here so that a typo or a bad value is one line naming `extra.<field>`; the values then build
    `SparsePOConfig`, whose fields document the same names.
    """

    mask_type: Literal["learned", "activation", "ones"] = "learned"
    mask_on_reward: bool = True
    mask_on_kl: bool = True
    use_kl_term: bool = True
    rw_kl_independent: bool = False
    l1_u: float = Field(0.0, ge=0)
    l1_d: float = Field(0.0, ge=0)
    mask_weight_decay: float = Field(0.01, ge=0)
    mask_learning_rate: float | None = Field(None, gt=0)
    mask_init: Literal["ones", "normal"] = "ones"
    weight_decay: float = Field(0.0, ge=0, description="Weight decay of the policy parameters.")
    lr_scheduler_type: str = "linear"
    warmup_steps: int = Field(0, ge=0)
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1, description="Write a checkpoint every this many optimizer steps.")
    save_total_limit: int | None = Field(2, ge=1, description="Checkpoints kept; older ones are deleted.")
    gradient_checkpointing: bool = False
    dtype: Literal["float32", "bfloat16", "auto"] = Field(
        "float32", description="Weights dtype; bfloat16 also turns on bf16 mixed precision."
    )
    lora_r: int | None = Field(None, ge=1, description="Train a LoRA adapter of this rank instead of all weights.")
    lora_alpha: int = Field(16, ge=1)
    lora_target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass(frozen=True)
class SparsePOJob:
    """Everything one training run needs; picklable, so Ray ships it to the workers as it is."""

    training: TrainingConfig
    settings: SparsePOSettings
    data: str
    out_dir: str
    db_url: str | None = None
    use_cpu: bool = True


def load_job(
    config_path: str | Path | None,
    overrides: list[str] | tuple[str, ...],
    data: str,
    out_dir: str | Path,
    db_url: str | None = None,
) -> SparsePOJob:
    """Validate the config file, the overrides and the SparsePO settings; every problem is a ConfigError."""
    from configs.loading import load_config, resolve_config_path

    training = load_config(config_path, overrides, schema=TrainingConfig)
    source = str(resolve_config_path(config_path)) if config_path is not None else "defaults"
    try:
        settings = SparsePOSettings.model_validate(training.extra)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in ("extra", *err["loc"]))
            message = "unknown SparsePO setting" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"field '{field}': {message}")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None
    job = SparsePOJob(training, settings, str(data), str(Path(out_dir).resolve()), db_url, use_cpu=not _has_cuda())
    try:
        sparsepo_config(job)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return job


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sparsepo_config(job: SparsePOJob, *, report_to: list[str] | None = None) -> Any:
    """The `SparsePOConfig` of a job (output_dir = the job's folder, where checkpoints also go)."""
    from training.sparsepo import SparsePOConfig

    settings = job.settings.model_dump()
    dtype = settings.pop("dtype")
    for key in ("lora_r", "lora_alpha", "lora_target_modules"):
        settings.pop(key)
    shared = {name: getattr(job.training, name) for name in _SHARED_FIELDS}
    return SparsePOConfig(
        output_dir=job.out_dir,
        bf16=dtype == "bfloat16",
        use_cpu=job.use_cpu,
        model_init_kwargs={"dtype": dtype},
        save_strategy="steps",
        report_to=report_to or [],
        **shared,
        **settings,
    )


def last_checkpoint(out_dir: str | Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out_dir)) if Path(out_dir).is_dir() else None


def build_trainer(job: SparsePOJob, callbacks: list[Any] | None = None) -> Any:
    """A SparsePOTrainer for `job`: the export loaded, the model resolved, LoRA applied when asked."""
    from transformers import AutoTokenizer

    from agents.catalog import resolve_model
    from pipelines.export import load_preference_set
    from training.sparsepo import SparsePOTrainer

    dataset = load_preference_set(job.data, job.db_url)
    if len(dataset) == 0:
        raise ConfigError(f"export {job.data!r} holds no pairs to train on")
    model_path = resolve_model(job.training.model)
    peft_config = None
    if job.settings.lora_r is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=job.settings.lora_r,
            lora_alpha=job.settings.lora_alpha,
            target_modules=job.settings.lora_target_modules,
            task_type="CAUSAL_LM",
        )
    return SparsePOTrainer(
        model=model_path,
        args=sparsepo_config(job),
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(model_path),
        callbacks=callbacks,
        peft_config=peft_config,
    )


def _finish(trainer: Any, job: SparsePOJob, resumed_from: str | None) -> dict[str, Any]:
    """Save the final model (and masks) into the job folder and write a short summary beside it."""
    trainer.save_model(job.out_dir)
    summary = {
        "global_step": trainer.state.global_step,
        "resumed_from": resumed_from,
        "log_history": trainer.state.log_history,
        "config": {"training": job.training.model_dump(), "sparsepo": job.settings.model_dump()},
    }
    if trainer.args.should_save:
        Path(job.out_dir, "sparsepo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def train_local(job: SparsePOJob, *, resume: bool = True) -> dict[str, Any]:
    """Train in this process; resumes from the newest `checkpoint-*` in the job folder unless told not to."""
    resumed_from = last_checkpoint(job.out_dir) if resume else None
    trainer = build_trainer(job)
    trainer.train(resume_from_checkpoint=resumed_from)
    return _finish(trainer, job, resumed_from)


def _ray_worker_loop(config: dict[str, Any]) -> None:
    """Run on every Ray Train worker: the same trainer, reporting its checkpoints to Ray Train."""
    import torch
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    job: SparsePOJob = config["job"]
    trainer = prepare_trainer(build_trainer(job, callbacks=[RayTrainReportCallback()]))
    resumed_from = config["resume_from"]
    trainer.train(resume_from_checkpoint=resumed_from)
    _finish(trainer, job, resumed_from)


def train_on_ray(job: SparsePOJob, num_workers: int, *, resume: bool = True) -> dict[str, Any]:
    """Train on `num_workers` Ray Train workers (DDP over gloo on CPU, NCCL on GPUs).

    Workers write HF checkpoints into the job folder, which must be on storage every worker sees (the
    same machine, or a shared filesystem on a cluster); a rerun resumes from the newest one there.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    resumed_from = last_checkpoint(job.out_dir) if resume else None
    trainer = TorchTrainer(
        _ray_worker_loop,
        train_loop_config={"job": job, "resume_from": resumed_from},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=not job.use_cpu),
        run_config=RunConfig(storage_path=str(Path(job.out_dir, "ray")), name="sparsepo"),
    )
    trainer.fit()
    return json.loads(Path(job.out_dir, "sparsepo_summary.json").read_text())
