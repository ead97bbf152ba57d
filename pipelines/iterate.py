"""`prefsmith iterate`: the Anyprefer outer loop. Round r synthesizes with the current policy as the target,
exports the accepted pairs, trains the policy on them, evaluates the trained model on held-out problems, and
makes it the next round's target. The base model is evaluated first (round 0), on the same problems.

Every finished stage is recorded in the database (`iteration_stages`) with what it produced, and every trained
model is registered as a checkpoint with its lineage (`checkpoints`): kill the loop at any point and rerun the
same command, and it continues after the last finished stage, repeating none (an unfinished synthesis resumes
its run; an unfinished DPO or SparsePO training resumes from its last trainer checkpoint, the debiasing trainer,
which keeps none, starts over). A larger --rounds continues a finished loop; other settings under the same
--name are refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

from configs.errors import PrefsmithError
from configs.schema import SynthesisConfig, TrainingConfig
from storage.db import session_scope
from storage.evaluations import BIAS_MEASURES, EvaluationRecord
from storage.folders import check_slug, prefsmith_home
from training.evaluation.base import EvalPlan, EvalSettings, Evaluation

STAGES = ("synthesize", "export", "train", "evaluate")


class IterateError(PrefsmithError):
    """A round cannot go on (its synthesis accepted no pair to train on)."""


class IterateStopped(PrefsmithError):
    """The round's synthesis was interrupted; rerunning the command resumes it."""

    exit_code = 75


@dataclass(frozen=True)
class IterateSettings:
    name: str
    rounds: int
    trainer: str = "dpo"
    training: TrainingConfig = field(default_factory=TrainingConfig)
    training_source: str = "defaults"
    eval_prompts: str = "builtin:arithmetic"
    eval_limit: int | None = 50
    eval: EvalSettings = field(default_factory=EvalSettings)
    eval_backend: str = "auto"  # instruction prompts: the engine of the greedy answers (auto, vllm, transformers)
    require_verified: bool = False
    training_overrides: tuple[str, ...] = ()  # the --train-set given, part of what makes two invocations one loop
    labor_table: str | None = None  # a trainer that grounds on the BLS table (debias): the table, also measured by
    include_retired: bool = False  # play prompts this loop's policies mastered or found out of reach


def checkpoint_name(iteration: str, round_index: int) -> str:
    return f"{iteration}-r{round_index}"


def with_target(config: SynthesisConfig, model: str) -> SynthesisConfig:
    """`config` with `model` as its target; the other roles keep the models they were configured with."""
    if config.models[config.roles.target].name == model:
        return config
    target = config.models[config.roles.target].model_copy(update={"name": model})
    key = "iterate-target"
    return config.model_copy(
        update={
            "models": {**config.models, key: target},
            "roles": config.roles.model_copy(update={"target": key}),
        }
    )


def iterate(
    config: SynthesisConfig,
    settings: IterateSettings,
    *,
    db_url: str | None = None,
    address: str | None = None,
    log: Callable[[str], None] = print,
    progress: Any = None,
    eval_progress: Callable[[str, int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Play `settings.rounds` rounds (see the module doc); returns one row per round (0 = the base model)."""
    from pipelines.prompt_sources import instruction_source, load_instruction_set, load_problems
    from storage.migrate import open_database, upgrade
    from training.evaluation import evaluation_class
    from training.evaluation.generation import GenerationBackend
    from training.evaluation.instructions import InstructionEvaluation
    from training.train import trainer_class, trainers

    check_slug(settings.name, "--name")
    if settings.trainer not in trainers():
        raise IterateError(f"--trainer {settings.trainer!r}: iterate trains with {', '.join(trainers())}")
    trainer = trainer_class(settings.trainer)
    if trainer.needs_labor_table and not settings.labor_table:
        raise IterateError(
            f"--trainer {settings.trainer} needs --labor-table (the BLS table it grounds on and is measured by)"
        )
    plan = EvalPlan(
        prompts=settings.eval_prompts,
        problems=partial(load_problems, settings.eval_prompts, settings.eval_limit, settings.eval.seed),
        labor_table=settings.labor_table,
        limit=settings.eval_limit,
        settings=settings.eval,
        # the occupations a grounded trainer probes are the ones its bias is measured on
        min_employed=int(settings.training.extra.get("min_employed", 100)),
    )
    evaluation: Evaluation
    if trainer.evaluation == "task" and instruction_source(settings.eval_prompts):
        evaluation = InstructionEvaluation(
            plan,
            partial(load_instruction_set, settings.eval_prompts, settings.eval_limit, settings.eval.seed),
            cast(GenerationBackend, settings.eval_backend),
            eval_progress,
        )
    else:
        evaluation = evaluation_class(trainer.evaluation)(plan, eval_progress)
    url = db_url or config.storage.url
    upgrade(url, create_dirs=url is None)
    engine = open_database(url)
    folder = prefsmith_home() / "iterations" / settings.name
    try:
        ledger = StageLedger(engine, settings.name, log)
        stages = RoundStages(config, settings, engine, url, address, log, progress, folder)
        rows = _play(config, settings, ledger, stages, RoundEvaluation(evaluation, engine, folder))
    finally:
        engine.dispose()
    _write_summary(rows, folder, settings.name, evaluation)
    return rows


def fingerprint(config: SynthesisConfig, settings: IterateSettings) -> str:
    """What makes two invocations the same loop: everything but the number of rounds."""
    from configs.loading import config_hash

    s = settings
    described = {
        "synthesis": config_hash(config),
        "trainer": s.trainer,
        "training": config_hash(s.training),
        "training_overrides": list(s.training_overrides),
        "eval": [s.eval_prompts, s.eval_limit, vars(s.eval)],  # not the backend: an engine, not what is measured
        "require_verified": s.require_verified,
        "labor_table": s.labor_table,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def _play(
    config: SynthesisConfig,
    settings: IterateSettings,
    ledger: StageLedger,
    stages: RoundStages,
    evaluation: RoundEvaluation,
) -> list[dict[str, Any]]:
    """The base model evaluated (round 0), then each round's stages, each round training the last one's policy."""
    expected = fingerprint(config, settings)
    started = ledger.run(0, "start", lambda: {"fingerprint": expected})
    if started["fingerprint"] != expected:
        raise IterateError(
            f"iteration {settings.name!r} was started with other settings (synthesis or training config, "
            "trainer, evaluation); rerun it with those, or choose another --name"
        )
    base = config.models[config.roles.target].name
    figures = ledger.run(0, "evaluate", evaluation.measure, 0, base)
    rows = [{"round": 0, "model": base, "eval": figures, "seconds": {"evaluate": figures["seconds"]}}]
    policy = base
    for r in range(1, settings.rounds + 1):
        name = checkpoint_name(settings.name, r)  # round r's run and the checkpoint it trains
        played = ledger.run(r, "synthesize", stages.synthesize, r, name, policy)
        exported = ledger.run(r, "export", stages.export, r, name)
        trained = ledger.run(r, "train", stages.train, r, name, policy, exported)
        figures = ledger.run(r, "evaluate", evaluation.measure_checkpoint, r, name)
        results = (played, exported, trained, figures)
        seconds = {stage: result["seconds"] for stage, result in zip(STAGES, results, strict=True)}
        rows.append({"round": r, "model": name, "run": name, "export": exported, "eval": figures, "seconds": seconds})
        policy = name
    return rows


class StageLedger:
    """The finished stages of one iteration, kept in the database: a stage runs once, and a rerun is given back
    what it produced (with how long it took)."""

    def __init__(self, engine: Any, iteration: str, log: Callable[[str], None]) -> None:
        from storage.lineage import finished_stages

        self.engine, self.iteration, self.log = engine, iteration, log
        with session_scope(engine) as session:
            self.done = finished_stages(session, iteration)

    def run(self, round_index: int, stage: str, work: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        from storage.lineage import finish_stage

        if (round_index, stage) in self.done:
            self.log(f"round {round_index} {stage}: finished before, not repeated")
            return self.done[(round_index, stage)]
        started = time.perf_counter()
        result = {**work(*args), "seconds": round(time.perf_counter() - started, 1)}
        with session_scope(self.engine) as session:
            finish_stage(session, self.iteration, round_index, stage, result)
        self.done[(round_index, stage)] = result
        self.log(f"round {round_index} {stage}: done")
        return result


class RoundStages:
    """A round's synthesis with the policy as its target, the export of its accepted pairs, and the training of
    the policy on them; each returns what it produced."""

    def __init__(
        self,
        config: SynthesisConfig,
        settings: IterateSettings,
        engine: Any,
        url: str | None,
        address: str | None,
        log: Callable[[str], None],
        progress: Any,
        folder: Path,
    ) -> None:
        self.config, self.settings, self.engine, self.url, self.address = config, settings, engine, url, address
        self.log, self.progress, self.folder = log, progress, folder

    def synthesize(self, r: int, run_id: str, policy: str) -> dict[str, Any]:
        from pipelines.synthesis.service import synthesize

        # the policies of this loop so far (the base, then each round's checkpoint) retire prompts for it
        lineage = [self.config.models[self.config.roles.target].name]
        lineage += [checkpoint_name(self.settings.name, k) for k in range(1, r)]
        report = synthesize(
            with_target(self.config, policy),
            run_id=run_id,
            db_url=self.url,
            address=self.address,
            progress=self.progress,
            skip_retired_by=() if self.settings.include_retired else lineage,
        )
        self.log(report.summary())
        if report.interrupted:
            raise IterateStopped(f"round {r} synthesis (run {run_id}) stopped: {report.interrupted}; rerun to resume")
        return {"run_id": run_id, "target": policy}

    def export(self, r: int, run_id: str) -> dict[str, Any]:
        from pipelines.export import export_run
        from storage.queries import pair_quality

        (self.folder / f"r{r}").mkdir(parents=True, exist_ok=True)
        result = export_run(
            self.engine,
            run_id,
            self.folder / f"r{r}" / "export",
            fmt="parquet",
            force=True,  # a folder left by an export cut short before its stage was recorded
            require_verified=self.settings.require_verified,
        )
        if result.num_pairs == 0:
            raise IterateError(
                f"round {r}: run {run_id} accepted no pairs to train on (play more prompts, candidates or rounds "
                "per episode)"
            )
        with session_scope(self.engine) as session:
            quality = pair_quality(session, run_id)
        return {"export_id": result.id, "path": str(result.path), "pairs": result.num_pairs, "quality": quality}

    def train(self, r: int, name: str, policy: str, exported: dict[str, Any]) -> dict[str, Any]:
        """The policy trained on the round's export into checkpoint `name` (a whole model, a LoRA adapter merged
        into its base, so the next round's engine serves it), registered with its lineage."""
        from agents.catalog import checkpoints_dir
        from configs.loading import config_hash
        from storage.lineage import register_checkpoint
        from training.train import load_trainer, merge_adapter

        s = self.settings
        training = s.training.model_copy(update={"model": policy})
        out = checkpoints_dir() / name
        trainer = load_trainer(
            s.trainer,
            training,
            exported["export_id"],
            out,
            db_url=self.url,
            source=s.training_source,
            labor_table=s.labor_table,
        )
        summary = trainer.train()
        merge_adapter(out)
        with session_scope(self.engine) as session:
            register_checkpoint(
                session,
                name,
                str(out),
                base_model=policy,
                trainer=s.trainer,
                config_hash=config_hash(training),
                export_id=exported["export_id"],
                iteration=s.name,
                round_index=r,
            )
        for resumable in out.glob("checkpoint-*"):  # the trainer's states, kept only to resume a cut training
            shutil.rmtree(resumable, ignore_errors=True)
        return {"checkpoint": name, "path": str(out), "steps": summary.global_step}


class RoundEvaluation:
    """Every round's model measured by the one evaluation its trainer names, its report in the round's folder;
    a trained checkpoint also keeps its scores."""

    def __init__(self, evaluation: Evaluation, engine: Any, folder: Path) -> None:
        self.evaluation, self.engine, self.folder = evaluation, engine, folder

    def measure(self, r: int, model: str) -> dict[str, Any]:
        return self.evaluation.run(model, self.folder / f"r{r}" / "eval").stored()

    def measure_checkpoint(self, r: int, name: str) -> dict[str, Any]:
        from storage.evaluations import record_checkpoint_scores

        figures = self.measure(r, name)
        with session_scope(self.engine) as session:
            record_checkpoint_scores(session, name, self.evaluation.source, EvaluationRecord.from_stored(figures))
        return figures


def round_table(rows: list[dict[str, Any]]) -> list[str]:
    """The per-round table as text lines: pairs, their quality, and each measure with its 95% interval."""
    records = [EvaluationRecord.from_stored(row["eval"]) for row in rows]
    measures = records[0].measures
    digits = 1 if records[0].measures == BIAS_MEASURES else 3  # bias in points, or shares of problems
    width = 24 if digits == 3 else 20
    lines = [
        f"{'round':<6}{'model':<28}{'pairs':>6}{'r>w':>6}  " + "  ".join(f"{label:<{width}}" for _, label in measures)
    ]
    for row, record in zip(rows, records, strict=True):
        export = row.get("export") or {}
        quality = export.get("quality") or {}
        share = quality.get("share")
        cells = []
        for key, _ in measures:
            m = record.scores[key]
            low, high = m.ci95
            cells.append(f"{m.value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]".ljust(width))
        lines.append(
            f"{row['round']:<6}{row['model'][:27]:<28}{export.get('pairs', '-')!s:>6}"
            f"{'-' if share is None else f'{share:.2f}':>6}  " + "  ".join(cells)
        )
    return lines


def _write_summary(rows: list[dict[str, Any]], folder: Path, name: str, evaluation: Evaluation) -> None:
    from training.evaluation.plots import plot_measures

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rounds.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    (folder / "rounds.md").write_text("```\n" + "\n".join(round_table(rows)) + "\n```\n")
    records = {
        ("base" if row["round"] == 0 else f"round {row['round']}"): EvaluationRecord.from_stored(row["eval"])
        for row in rows
    }
    first = next(iter(records.values()))
    plot_measures(
        {label: record.scores for label, record in records.items()},
        folder / "rounds.png",
        f"{name}: {evaluation.source} ({first.split}, {first.problems} problems)",
        first.measures,
        evaluation.ylabel,
    )
