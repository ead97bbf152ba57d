"""The one shape of every preference trainer (DPO, SparsePO, debiasing): a job, a trainer built from it that trains
and resumes alike, the typed summary it writes beside the model, and which evaluation measures what it learnt.

What every trainer does the same way (load the set, check it, resolve the model, load the tokenizer, checkpoint,
save, summarise) is done here once; a trainer says only how it builds its TRL trainer (docs/architecture.md).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from configs.errors import ConfigError
from configs.schema import TrainingConfig
from training.evaluation.base import EvalKind

if TYPE_CHECKING:
    from datasets import Dataset
    from trl import DPOConfig, ModelConfig

@dataclass(frozen=True)
class TrainingJob:
    """Everything one training run needs; picklable, so Ray ships it to the workers as it is.

    The trainer's config is built from `training` where the trainer runs, so each machine picks its device.
    """

    training: TrainingConfig
    data: str  # an export id, or a folder written by `prefsmith export`
    out_dir: str  # absolute: checkpoints, the final model and the summary
    db_url: str | None = None
    source: str = "defaults"  # the config file, named in error messages
    labor_table: str | None = None  # the BLS table, for a trainer that grounds on it


@dataclass
class TrainingSummary:
    """What a finished training did; written to `<trainer>_summary.json` in the output folder."""

    trainer: str
    global_step: int
    resumed_from: str | None
    log_history: list[dict[str, Any]]
    config: dict[str, Any]
    precision: dict[str, bool] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def last_checkpoint(out_dir: str | Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out_dir)) if Path(out_dir).is_dir() else None


class PreferenceTrainer(ABC):
    """One training algorithm on a preference set. Building it checks the settings (a bad one fails before any
    model loads); `train` loads the set, trains (resuming from the newest `checkpoint-*` of the output folder)
    and saves the final model with its summary."""

    name: ClassVar[str]
    config_class: ClassVar[type[DPOConfig]]
    evaluation: ClassVar[EvalKind] = "task"  # how the trained model is measured (training/evaluation)
    needs_labor_table: ClassVar[bool] = False
    summary_class: ClassVar[type[TrainingSummary]] = TrainingSummary

    def __init__(self, job: TrainingJob) -> None:
        from training.trainer_config import trainer_config

        if self.needs_labor_table and not job.labor_table:
            raise ConfigError(f"the {self.name} trainer needs a labor table (--labor-table)")
        self.job = job
        self.args: DPOConfig
        self.model_config: ModelConfig
        self.args, self.model_config = trainer_config(
            self.config_class, job.training, job.out_dir, source=job.source, trainer=self.name
        )

    @property
    def summary_path(self) -> Path:
        return Path(self.job.out_dir, f"{self.name}_summary.json")

    def preference_set(self) -> Dataset:
        """The job's export, checked to hold pairs, as this trainer trains on it."""
        from storage.preference_sets import load_preference_set

        dataset = load_preference_set(self.job.data, self.job.db_url)
        if len(dataset) == 0:
            raise ConfigError(f"export {self.job.data!r} holds no pairs to train on")
        return self.select_pairs(dataset)

    def select_pairs(self, dataset: Dataset) -> Dataset:
        """The pairs of the export this trainer trains on (all of them, unless a trainer says otherwise)."""
        return dataset

    def build(self, callbacks: list[Any] | None = None) -> Any:
        """The TRL trainer of this job: the set loaded, the model resolved, its tokenizer loaded."""
        from transformers import AutoTokenizer

        from agents.catalog import resolve_model
        from training.trainer_config import model_trainer_kwargs

        dataset = self.preference_set()
        model_path = resolve_model(self.job.training.model)
        return self.make_trainer(
            model_path,
            AutoTokenizer.from_pretrained(model_path),
            dataset,
            callbacks=callbacks,
            **model_trainer_kwargs(self.model_config),
        )

    @abstractmethod
    def make_trainer(self, model: str, tokenizer: Any, dataset: Dataset, **kwargs: Any) -> Any:
        """This algorithm's TRL trainer; `kwargs` (callbacks, LoRA, quantization) go to its constructor."""

    def train(self, *, resume: bool = True) -> TrainingSummary:
        """Train in this process; resumes from the newest `checkpoint-*` in the output folder unless told not to."""
        resumed_from = last_checkpoint(self.job.out_dir) if resume else None
        trainer = self.build()
        trainer.train(resume_from_checkpoint=resumed_from)
        return self.finish(trainer, resumed_from)

    def finish(self, trainer: Any, resumed_from: str | None) -> TrainingSummary:
        """Save the final model into the output folder and write the summary beside it (the main process only)."""
        trainer.save_model(self.job.out_dir)
        summary = self.summary(trainer, resumed_from)
        if trainer.args.should_save:
            self.summary_path.write_text(json.dumps(summary.as_dict(), indent=2, default=str) + "\n")
        return summary

    def summary(self, trainer: Any, resumed_from: str | None) -> TrainingSummary:
        return TrainingSummary(
            trainer=self.name,
            global_step=trainer.state.global_step,
            resumed_from=resumed_from,
            log_history=list(trainer.state.log_history),
            config=self.job.training.model_dump(),
            precision={name: getattr(trainer.args, name) for name in ("use_cpu", "bf16", "fp16")},
        )

    def read_summary(self) -> TrainingSummary:
        """The summary a finished training wrote (what Ray Train workers leave for the driver)."""
        return self.summary_class(**json.loads(self.summary_path.read_text()))
