"""The trainers by name, and running one: built from a `TrainingConfig` (or a config file and `--set` overrides),
trained in this process or on Ray Train workers (`TorchTrainer` with the Hugging Face integration); both checkpoint
and resume alike. `iterate`, the CLI and Ray Train all go through here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from configs.errors import ConfigError
from configs.schema import TrainingConfig
from training.trainer import PreferenceTrainer, TrainingJob, TrainingSummary, last_checkpoint


def _registry() -> dict[str, type[PreferenceTrainer]]:
    # Imported here: each trainer module imports torch and TRL, which the CLI loads only when it trains.
    from training.debias import DebiasPreferenceTrainer
    from training.dpo import DPOPreferenceTrainer
    from training.sparsepo import SparsePOPreferenceTrainer

    return {t.name: t for t in (DPOPreferenceTrainer, SparsePOPreferenceTrainer, DebiasPreferenceTrainer)}


def trainers() -> tuple[str, ...]:
    """The names of the trainers, as `--trainer` takes them."""
    return tuple(_registry())


def trainer_class(name: str) -> type[PreferenceTrainer]:
    found = _registry()
    if name not in found:
        raise ConfigError(f"unknown trainer {name!r} (have: {', '.join(found)})")
    return found[name]


def load_trainer(
    name: str,
    training: TrainingConfig,
    data: str | Path,
    out_dir: str | Path,
    *,
    db_url: str | None = None,
    source: str = "defaults",
    labor_table: str | Path | None = None,
) -> PreferenceTrainer:
    """Trainer `name` on export `data` into `out_dir`, its settings checked: a bad one fails before any model loads."""
    job = TrainingJob(
        training,
        str(data),
        str(Path(out_dir).resolve()),
        db_url,
        source,
        None if labor_table is None else str(labor_table),
    )
    return trainer_class(name)(job)


def load_trainer_from_file(
    name: str,
    config_path: str | Path | None,
    overrides: list[str] | tuple[str, ...],
    data: str | Path,
    out_dir: str | Path,
    *,
    db_url: str | None = None,
    labor_table: str | Path | None = None,
) -> PreferenceTrainer:
    """`load_trainer` with the config file (or preset) and `--set` overrides validated first; every problem is a
    ConfigError naming the file."""
    from configs.loading import load_config, resolve_config_path

    training = load_config(config_path, list(overrides), schema=TrainingConfig)
    source = str(resolve_config_path(config_path)) if config_path is not None else "defaults"
    return load_trainer(name, training, data, out_dir, db_url=db_url, source=source, labor_table=labor_table)


def _ray_worker_loop(config: dict[str, Any]) -> None:
    """Run on every Ray Train worker: the same trainer, reporting its checkpoints to Ray Train."""
    import torch
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    trainer = trainer_class(config["trainer"])(config["job"])
    built = prepare_trainer(trainer.build(callbacks=[RayTrainReportCallback()]))
    built.train(resume_from_checkpoint=config["resume_from"])
    trainer.finish(built, config["resume_from"])


def train_on_ray(trainer: PreferenceTrainer, num_workers: int, *, resume: bool = True) -> TrainingSummary:
    """Train on `num_workers` Ray Train workers (DDP over gloo on CPU, NCCL on GPUs).

    Workers write HF checkpoints into the job folder, which must be on storage every worker sees (the
    same machine, or a shared filesystem on a cluster); a rerun resumes from the newest one there.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    job = trainer.job
    resumed_from = last_checkpoint(job.out_dir) if resume else None
    TorchTrainer(
        _ray_worker_loop,
        train_loop_config={"trainer": trainer.name, "job": job, "resume_from": resumed_from},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=not trainer.args.use_cpu),
        run_config=RunConfig(storage_path=str(Path(job.out_dir, "ray")), name=trainer.name),
    ).fit()
    return trainer.read_summary()


def merge_adapter(out_dir: str | Path) -> None:
    """Replace a LoRA adapter saved in `out_dir` by the whole model it makes with its base, so that a vLLM or
    transformers engine can serve the folder as a target (what `prefsmith iterate` trains for)."""
    folder = Path(out_dir)
    if not (folder / "adapter_config.json").is_file():
        return
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    merged = AutoPeftModelForCausalLM.from_pretrained(str(folder)).merge_and_unload()
    merged.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        (folder / name).unlink(missing_ok=True)
