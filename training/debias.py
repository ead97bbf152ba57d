"""Labor-data-grounded debiasing trainer: TRL's DPO loss on exported preference pairs plus
λ · KL(BLS shares ‖ model option probabilities) on multiple-choice probes of training occupations.

Also builds grounded pairs straight from the BLS table (checked by the labor statistics tool) for when no
synthesis export exists, and the `train_debias` entry point behind `prefsmith train debias`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_utils import SaveStrategy
from trl import DPOConfig, DPOTrainer

from configs.errors import ConfigError
from configs.splits import held_out_occupation, occupation_key
from tools.bls import LaborTable, OccupationRow, read_table
from tools.labor import LaborStatisticsTool
from training.bias_eval import (
    DIMENSIONS,
    display,
    option_log_probs,
    option_token_ids,
    probe_occupations,
    render_user,
    split_occupations,
)


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


# ---------------------------------------- grounded pairs

_PAIR_QUESTIONS = {
    "gender": "What share of {occupation_lower} in the U.S. are women?",
    "race": "What is the racial makeup of {occupation_lower} in the U.S.?",
    "ethnicity": "What share of {occupation_lower} in the U.S. are Hispanic or Latino?",
}


def _pair_texts(row: OccupationRow, dimension: str) -> tuple[str, str]:
    """(consistent with BLS, stereotyped or contradicting it) answers for one occupation."""
    name = display(row.title)["occupation_lower"]
    if dimension == "gender":
        women = row.women or 0.0
        chosen = (
            f"According to U.S. labor statistics, about {women:.0f}% of {name} are women "
            f"and {100 - women:.0f}% are men."
        )
        # "All are men" is a stereotype only where the tool can tell it from the data (≥ 95% claimed, so
        # at most 88% has to be the truth for a 7-point miss); near 0 or 100 it is the data itself.
        if 15 < abs(women - 50) and 12 <= women <= 88:
            majority, other = ("women", "men") if women > 50 else ("men", "women")
            rejected = f"All {name} are {majority}; {other} don't do this job."
        else:
            rejected = f"About {women + 40 if women < 50 else women - 40:.0f}% of {name} are women."
        return chosen, rejected
    if dimension == "race":
        white, black, asian = row.white or 0.0, row.black or 0.0, row.asian or 0.0
        chosen = (
            f"According to U.S. labor statistics, about {white:.0f}% of {name} are White, "
            f"{black:.0f}% are Black and {asian:.0f}% are Asian."
        )
        swapped = (
            f"About {black:.0f}% of {name} are White, {white:.0f}% are Black and {asian:.0f}% are Asian."
            if abs(white - black) > 10
            else f"All {name} are White."
        )
        return chosen, swapped
    hispanic = row.hispanic or 0.0
    chosen = f"According to U.S. labor statistics, about {hispanic:.0f}% of {name} are Hispanic or Latino."
    wrong = hispanic + 30 if hispanic < 50 else hispanic - 30
    return chosen, f"About {wrong:.0f}% of {name} are Hispanic or Latino."


def grounded_pairs(
    table_path: str | Path, rows: Sequence[OccupationRow], dimensions: Sequence[str] = tuple(DIMENSIONS)
) -> list[dict[str, Any]]:
    """Preference rows built from the table for `rows`, kept only when the labor statistics tool judges
    chosen consistent (verdict True) and rejected not (verdict False) — the synthesis loop's criterion."""
    tool = LaborStatisticsTool(table_path=str(table_path))
    out = []
    for row in rows:
        for dimension in dimensions:
            chosen, rejected = _pair_texts(row, dimension)
            verdicts = [
                tool.evidence({"occupation": row.title, "claim": c}).verdict for c in (chosen, rejected)
            ]
            if verdicts != [True, False]:
                continue
            question = _PAIR_QUESTIONS[dimension].format(**display(row.title))
            pair_id = hashlib.sha256(f"{question}\n{chosen}\n{rejected}".encode()).hexdigest()
            out.append(
                {
                    "prompt": [{"role": "user", "content": question}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                    "score": 10.0,
                    "pair_id": pair_id,
                    "prompt_id": hashlib.sha256(question.encode()).hexdigest(),
                    "occupation": row.title,
                    "dimension": dimension,
                }
            )
    return out


def write_table_pairs_export(table_path: str | Path, rows: Sequence[OccupationRow], out: Path) -> Path:
    """An export-shaped folder (data.parquet + manifest.json) of `grounded_pairs`; its manifest says the
    pairs come from the BLS table directly, not from a synthesis run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pairs = grounded_pairs(table_path, rows)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(pairs), out / "data.parquet")
    digest = hashlib.sha256(str(sorted(r.title for r in rows)).encode()).hexdigest()
    manifest = {
        "id": f"bls-table-pairs-{digest[:8]}",
        "format": "parquet",
        "data": "data.parquet",
        "source": "built from the BLS table by training.debias.grounded_pairs (no synthesis run)",
        "labor_table": str(table_path),
        "counts": {"pairs": len(pairs), "occupations": len(rows)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out


# ---------------------------------------- entry point


@dataclass(frozen=True)
class DebiasRun:
    output_dir: Path
    train_occupations: list[str]
    held_out_occupations: list[str]
    log_history: list[dict[str, Any]]
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


def train_debias_model(
    export: str | Path,
    labor_table: str | Path,
    config_file: str | Path,
    out: str | Path,
    overrides: Sequence[str] = (),
) -> DebiasRun:
    """Train the debiasing trainer on an export with the grounding term on training occupations; saves the
    model, tokenizer and `split.json` (train / held-out occupations) to `out`."""
    from transformers import AutoTokenizer

    from agents.catalog import resolve_model
    from configs.loading import load_config, resolve_config_path
    from configs.schema import TrainingConfig
    from storage.preference_sets import load_preference_set
    from training.trainer_config import model_trainer_kwargs, trainer_config

    settings = load_config(config_file, list(overrides), schema=TrainingConfig)
    output_dir = Path(out)
    torch.set_num_threads(1)
    args, model_config = trainer_config(
        DebiasConfig, settings, str(output_dir), source=str(resolve_config_path(config_file)), trainer="debias"
    )
    table = read_table(labor_table)
    train_rows, held_out_rows = occupation_split(table, args)
    held_out = {r.title for r in held_out_rows}
    dataset = load_preference_set(export)
    if len(dataset) == 0:
        raise ConfigError(f"{export}: the export holds no pairs to train on")
    missing = [column for column in ("occupation", "dimension") if column not in dataset.column_names]
    if missing or all(value is None for value in dataset["occupation"]):
        raise ConfigError(
            f"{export}: the debiasing trainer needs pairs about occupations, each with its 'occupation' and "
            "'dimension' (an export of a run of occupation prompts, e.g. `prefsmith synthesize --config debias`); "
            + (f"this export has no {missing[0]!r} column" if missing else "no pair of this export names one")
        )
    # Pairs about held-out occupations would leak them into training (by title, and by the rule synthesis keeps).
    held_keys = {occupation_key(title) for title in held_out}

    def trainable(row: dict[str, Any]) -> bool:
        name = row["occupation"]
        if name is None:
            return True
        return occupation_key(name) not in held_keys and not (
            args.split_rule == "prefsmith" and held_out_occupation(name)
        )

    before = len(dataset)
    dataset = dataset.filter(trainable)
    if len(dataset) == 0:
        raise ConfigError(f"{export}: every pair is about a held-out occupation; nothing to train on")
    model_path = resolve_model(settings.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    trainer = DebiasTrainer(
        model=str(model_path),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        grounding=grounding_probes(train_rows, tokenizer, args.grounding_dimensions),
        **model_trainer_kwargs(model_config),
    )
    trainer.train()
    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    split = {"train": [r.title for r in train_rows], "held_out": sorted(held_out)}
    (output_dir / "split.json").write_text(json.dumps(split, indent=2) + "\n", encoding="utf-8")
    return DebiasRun(
        output_dir, split["train"], split["held_out"], list(trainer.state.log_history), before - len(dataset)
    )
