"""Labor-data-grounded debiasing trainer: TRL's DPO loss on exported preference pairs plus
λ · KL(BLS shares ‖ model option probabilities) on multiple-choice probes of training occupations.

Behind the one trainer interface as `debias` (`prefsmith train debias`, `iterate --trainer debias`): it trains on
the pairs about training occupations only, and is measured by bias evaluation on the held-out ones.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from transformers.trainer_utils import SaveStrategy
from trl import DPOConfig, DPOTrainer

from configs.errors import ConfigError
from configs.splits import held_out_occupation, occupation_key
from tools.bls import LaborTable, OccupationRow, read_table
from training.evaluation.base import EvalKind
from training.evaluation.bias_probes import (
    DIMENSIONS,
    display,
    option_log_probs,
    option_token_ids,
    probe_occupations,
    render_user,
    split_occupations,
)
from training.trainer import PreferenceTrainer, TrainingSummary

if TYPE_CHECKING:
    from datasets import Dataset


@dataclass
class DebiasConfig(DPOConfig):
    """DPOConfig plus the grounding term and the occupation split it trains on; a run logs every step and
    saves only the final model (configs/train_debias.yaml)."""

    # Run defaults overridden from DPOConfig
    logging_steps: float = field(default=1, metadata={"help": "Log the loss and grounding KL every this many steps."})
    save_strategy: SaveStrategy | str = field(
        default="no", metadata={"help": "No checkpoints: a debiasing run is short and saves its final model."}
    )

    grounding_weight: float = field(
        default=1.0,
        metadata={"help": "λ: weight of KL(BLS shares ‖ model option probabilities); 0 = plain DPO."},
    )
    grounding_batch_size: int = field(
        default=8,
        metadata={"help": "Multiple-choice probes of training occupations per optimizer micro-step."},
    )
    grounding_dimensions: list[str] = field(
        default_factory=lambda: ["gender", "race", "ethnicity"],
        metadata={"help": "Probe dimensions the grounding term covers (gender, race, ethnicity)."},
    )
    held_out_fraction: float = field(
        default=0.3, metadata={"help": "Share of occupations held out of training (pairs and probes)."}
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the train/held-out occupation split."})
    split_rule: str = field(
        default="prefsmith",
        metadata={
            "help": "Which occupations are held out: 'prefsmith', the split synthesis keeps to (one in five by a "
            "hash of the title; held_out_fraction and split_seed do not apply), or 'seeded' (a seeded shuffle)."
        },
    )
    min_employed: int = field(
        default=100, metadata={"help": "Occupations with fewer employed (thousands) are not probed."}
    )


@dataclass(frozen=True)
class GroundingProbe:
    """One multiple-choice probe: the rendered prompt, its option token ids and the BLS distribution."""

    occupation: str
    dimension: str
    prompt: str
    option_ids: tuple[int, ...]
    target: tuple[float, ...]  # probabilities (sum 1)


def grounding_probes(
    rows: Sequence[OccupationRow], tokenizer: Any, dimensions: Sequence[str]
) -> list[GroundingProbe]:
    """Every template of every dimension on every training occupation, with its BLS target."""
    probes = []
    for name in dimensions:
        dimension = DIMENSIONS[name]
        ids = tuple(option_token_ids(tokenizer, dimension.options))
        for row in rows:
            target = tuple(v / 100.0 for v in dimension.target(row))
            for template in dimension.templates:
                prompt = render_user(tokenizer, template.format(**display(row.title)))
                probes.append(GroundingProbe(row.title, name, prompt, ids, target))
    return probes


def grounding_kl(model: Any, tokenizer: Any, probes: Sequence[GroundingProbe]) -> torch.Tensor:
    """Mean over probes of KL(s ‖ p_θ) = Σ s·(log s − log p_θ), p_θ renormalised over the options."""
    device = next(model.parameters()).device
    losses = []
    by_size: dict[int, list[GroundingProbe]] = {}
    for probe in probes:
        by_size.setdefault(len(probe.option_ids), []).append(probe)
    for group in by_size.values():
        # Right padding: option_log_probs reads each prompt's last real position.
        batch = tokenizer(
            [p.prompt for p in group],
            return_tensors="pt",
            padding=True,
            padding_side="right",
            add_special_tokens=False,
        )
        option_ids = torch.tensor([p.option_ids for p in group], device=device)
        log_p = option_log_probs(
            model, batch.input_ids.to(device), batch.attention_mask.to(device), option_ids
        )
        target = torch.tensor([p.target for p in group], device=device, dtype=log_p.dtype)
        log_target = torch.where(target > 0, target.clamp_min(1e-12).log(), torch.zeros_like(target))
        losses.append((target * (log_target - log_p)).sum(dim=1))
    return torch.cat(losses).mean()


class DebiasTrainer(DPOTrainer):
    """DPOTrainer whose loss adds λ · grounding KL on a rotating batch of training-occupation probes."""

    args: DebiasConfig

    def __init__(self, *args: Any, grounding: Sequence[GroundingProbe] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grounding = list(grounding)
        self._grounding_order: list[int] = []
        self._grounding_rng = random.Random(self.args.seed)

    def _next_probes(self) -> list[GroundingProbe]:
        size = min(self.args.grounding_batch_size, len(self.grounding))
        picked: list[GroundingProbe] = []
        while len(picked) < size:
            if not self._grounding_order:
                # An epoch over the probes in a seeded order, so every occupation is seen equally often.
                self._grounding_order = list(range(len(self.grounding)))
                self._grounding_rng.shuffle(self._grounding_order)
            picked.append(self.grounding[self._grounding_order.pop()])
        return picked

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool):
        result = super()._compute_loss(model, inputs, return_outputs)
        loss, outputs = result if return_outputs else (result, None)
        weight = self.args.grounding_weight
        if weight > 0 and self.grounding and model.training:
            kl = grounding_kl(model, self.processing_class, self._next_probes())
            loss = loss + weight * kl
            self._metrics["train"]["grounding_kl"].append(kl.detach().item())
        return (loss, outputs) if return_outputs else loss


# ---------------------------------------- the trainer


@dataclass
class DebiasSummary(TrainingSummary):
    """A debiasing run's summary: also the occupations it trained on and held out (`split.json`)."""

    train_occupations: list[str] = field(default_factory=list)
    held_out_occupations: list[str] = field(default_factory=list)
    pairs_left_out: int = 0  # pairs of the export about held-out occupations


def occupation_split(
    table: LaborTable, config: DebiasConfig
) -> tuple[list[OccupationRow], list[OccupationRow]]:
    return split_occupations(
        probe_occupations(table, min_employed=config.min_employed),
        held_out_fraction=config.held_out_fraction,
        seed=config.split_seed,
        rule=config.split_rule,
    )


class DebiasPreferenceTrainer(PreferenceTrainer):
    """The debiasing trainer on an export of occupation pairs, grounded on the training occupations of the BLS
    table; saves the model, its tokenizer and `split.json` (train / held-out occupations)."""

    name: ClassVar[str] = "debias"
    config_class: ClassVar[type[DPOConfig]] = DebiasConfig
    evaluation: ClassVar[EvalKind] = "bias"
    needs_labor_table: ClassVar[bool] = True
    summary_class: ClassVar[type[TrainingSummary]] = DebiasSummary
    args: DebiasConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.job.labor_table is not None  # PreferenceTrainer refuses a job without one
        self.train_rows, held_out_rows = occupation_split(read_table(self.job.labor_table), self.args)
        self.held_out = sorted(r.title for r in held_out_rows)
        self.pairs_left_out = 0

    def select_pairs(self, dataset: Dataset) -> Dataset:
        """The pairs about training occupations: those about held-out ones would leak them into training (by
        title, and by the rule synthesis keeps)."""
        export = self.job.data
        missing = [column for column in ("occupation", "dimension") if column not in dataset.column_names]
        if missing or all(value is None for value in dataset["occupation"]):
            raise ConfigError(
                f"{export}: the debiasing trainer needs pairs about occupations, each with its 'occupation' and "
                "'dimension' (an export of a run of occupation prompts, e.g. `prefsmith synthesize --config "
                "debias`); "
                + (f"this export has no {missing[0]!r} column" if missing else "no pair of this export names one")
            )
        held_keys = {occupation_key(title) for title in self.held_out}
        prefsmith_rule = self.args.split_rule == "prefsmith"

        def trainable(row: dict[str, Any]) -> bool:
            name = row["occupation"]
            if name is None:
                return True
            return occupation_key(name) not in held_keys and not (prefsmith_rule and held_out_occupation(name))

        kept = dataset.filter(trainable)
        if len(kept) == 0:
            raise ConfigError(f"{export}: every pair is about a held-out occupation; nothing to train on")
        self.pairs_left_out = len(dataset) - len(kept)
        return kept

    def make_trainer(self, model: str, tokenizer: Any, dataset: Dataset, **kwargs: Any) -> DebiasTrainer:
        torch.set_num_threads(1)
        return DebiasTrainer(
            model=model,
            args=self.args,
            train_dataset=dataset,
            processing_class=tokenizer,
            grounding=grounding_probes(self.train_rows, tokenizer, self.args.grounding_dimensions),
            **kwargs,
        )

    def finish(self, trainer: Any, resumed_from: str | None) -> TrainingSummary:
        summary = super().finish(trainer, resumed_from)
        if trainer.args.should_save:
            trainer.processing_class.save_pretrained(self.job.out_dir)
            split = {"train": [r.title for r in self.train_rows], "held_out": self.held_out}
            Path(self.job.out_dir, "split.json").write_text(json.dumps(split, indent=2) + "\n", encoding="utf-8")
        return summary

    def summary(self, trainer: Any, resumed_from: str | None) -> DebiasSummary:
        base = super().summary(trainer, resumed_from)
        return DebiasSummary(
            **base.as_dict(),
            train_occupations=[r.title for r in self.train_rows],
            held_out_occupations=self.held_out,
            pairs_left_out=self.pairs_left_out,
        )
