"""SparsePO training entry points: a validated job (config + export + output folder), run in one process or
on Ray Train workers (`TorchTrainer` with the Hugging Face integration); both checkpoint and resume alike.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs.errors import ConfigError
from configs.schema import TrainingConfig

if TYPE_CHECKING:
    from trl import ModelConfig

    from training.sparsepo import SparsePOConfig


@dataclass(frozen=True)
class SparsePOJob:
    """Everything one training run needs; picklable, so Ray ships it to the workers as it is.

    The trainer's config is built from `training` where the trainer runs, so each machine picks its device.
    """

    training: TrainingConfig
    data: str
    out_dir: str
    db_url: str | None = None
    source: str = "defaults"  # the config file, named in error messages


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
    return load_job_from(training, data, out_dir, db_url, source)


def sparsepo_config(job: SparsePOJob) -> tuple[SparsePOConfig, ModelConfig]:
    """The job's `SparsePOConfig` (output_dir = the job's folder, where checkpoints also go) and the
    `ModelConfig` that says how to load the policy (dtype, LoRA), for the machine this runs on."""
    from training.sparsepo import SparsePOConfig
    from training.trainer_config import trainer_config

    return trainer_config(SparsePOConfig, job.training, job.out_dir, source=job.source, trainer="sparsepo")


def last_checkpoint(out_dir: str | Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out_dir)) if Path(out_dir).is_dir() else None


def build_trainer(job: SparsePOJob, callbacks: list[Any] | None = None) -> Any:
    """A SparsePOTrainer for `job`: the export loaded, the model resolved, LoRA applied when asked."""
    from transformers import AutoTokenizer

    from agents.catalog import resolve_model
    from storage.preference_sets import load_preference_set
    from training.sparsepo import SparsePOTrainer
    from training.trainer_config import model_trainer_kwargs

    dataset = load_preference_set(job.data, job.db_url)
    if len(dataset) == 0:
        raise ConfigError(f"export {job.data!r} holds no pairs to train on")
    model_path = resolve_model(job.training.model)
    args, model_config = sparsepo_config(job)
    return SparsePOTrainer(
        model=model_path,
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(model_path),
        callbacks=callbacks,
        **model_trainer_kwargs(model_config),
    )


def _finish(trainer: Any, job: SparsePOJob, resumed_from: str | None) -> dict[str, Any]:
    """Save the final model (and masks) into the job folder and write a short summary beside it."""
    trainer.save_model(job.out_dir)
    summary = {
        "global_step": trainer.state.global_step,
        "resumed_from": resumed_from,
        "log_history": trainer.state.log_history,
        "config": job.training.model_dump(),
        "precision": {name: getattr(trainer.args, name) for name in ("use_cpu", "bf16", "fp16")},
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
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=not sparsepo_config(job)[0].use_cpu),
        run_config=RunConfig(storage_path=str(Path(job.out_dir, "ray")), name="sparsepo"),
    )
    trainer.fit()
    return json.loads(Path(job.out_dir, "sparsepo_summary.json").read_text())


PREFERENCE_TRAINERS = ("dpo", "sparsepo")


def train_preference_local(
    trainer_name: str,
    training: TrainingConfig,
    data: str,
    out_dir: str | Path,
    *,
    db_url: str | None = None,
    source: str = "defaults",
) -> dict[str, Any]:
    """Train `training.model` on a preference set in this process with TRL's DPOTrainer (`dpo`) or SparsePO,
    resuming from the newest `checkpoint-*` in `out_dir`. The final model is saved in `out_dir` as a whole model
    (a LoRA adapter is merged into its base), so a vLLM or transformers engine can serve it as a target."""
    if trainer_name == "sparsepo":
        summary = train_local(load_job_from(training, data, out_dir, db_url, source))
    elif trainer_name == "dpo":
        summary = _train_dpo(training, data, str(Path(out_dir).resolve()), db_url, source)
    else:
        raise ConfigError(f"unknown trainer {trainer_name!r} (have: {', '.join(PREFERENCE_TRAINERS)})")
    _merge_adapter(Path(out_dir))
    return summary


def load_job_from(
    training: TrainingConfig, data: str, out_dir: str | Path, db_url: str | None, source: str
) -> SparsePOJob:
    """A job of an already loaded `training` config, checked: a bad setting fails before any model loads."""
    job = SparsePOJob(training, str(data), str(Path(out_dir).resolve()), db_url, source)
    sparsepo_config(job)
    return job


def _train_dpo(
    training: TrainingConfig, data: str, out_dir: str, db_url: str | None, source: str
) -> dict[str, Any]:
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from agents.catalog import resolve_model
    from storage.preference_sets import load_preference_set
    from training.trainer_config import model_trainer_kwargs, trainer_config

    args, model_config = trainer_config(DPOConfig, training, out_dir, source=source, trainer="dpo")
    dataset = load_preference_set(data, db_url)
    if len(dataset) == 0:
        raise ConfigError(f"export {data!r} holds no pairs to train on")
    model_path = resolve_model(training.model)
    trainer = DPOTrainer(
        model=model_path,
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(model_path),
        **model_trainer_kwargs(model_config),
    )
    resumed_from = last_checkpoint(out_dir)
    trainer.train(resume_from_checkpoint=resumed_from)
    trainer.save_model(out_dir)
    return {
        "global_step": trainer.state.global_step,
        "resumed_from": resumed_from,
        "log_history": trainer.state.log_history,
        "config": training.model_dump(),
    }


def _merge_adapter(out_dir: Path) -> None:
    """Replace a LoRA adapter saved in `out_dir` by the whole model it makes with its base."""
    if not (out_dir / "adapter_config.json").is_file():
        return
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    merged = AutoPeftModelForCausalLM.from_pretrained(str(out_dir)).merge_and_unload()
    merged.save_pretrained(str(out_dir))
    AutoTokenizer.from_pretrained(str(out_dir)).save_pretrained(str(out_dir))
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        (out_dir / name).unlink(missing_ok=True)
