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
from pathlib import Path
from typing import Any

from configs.errors import PrefsmithError
from configs.schema import SynthesisConfig, TrainingConfig
from pipelines.evaluate import MEASURES, EvalSettings, Measure, evaluate_task, plot_measures, write_report
from storage.db import session_scope
from storage.folders import check_slug, prefsmith_home

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
    require_verified: bool = False
    training_overrides: tuple[str, ...] = ()  # as given, for the debiasing trainer (which loads its own config)
    labor_table: str | None = None  # --trainer debias: the BLS table it grounds on and evaluates against
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


TRAINERS = ("dpo", "sparsepo", "debias")
# What the debiasing rounds are measured by (`prefsmith eval bias` on held-out occupations): bias in points.
BIAS_MEASURES = (
    ("bias_overall", "bias overall"),
    ("bias_women", "women"),
    ("bias_white", "White"),
    ("bias_black", "Black"),
    ("bias_asian", "Asian"),
    ("bias_hispanic", "Hispanic or Latino"),
)


def measures_of(figures: dict[str, Any]) -> list[tuple[str, str]]:
    """The (key, label) of the measures an evaluation stage recorded."""
    return [(str(m[0]), str(m[1])) for m in figures.get("measures", MEASURES)]


def _measures(figures: dict[str, Any]) -> dict[str, Measure]:
    return {key: Measure(figures[key]["value"], tuple(figures[key]["ci95"])) for key, _ in measures_of(figures)}


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
    from storage.migrate import open_database, upgrade

    check_slug(settings.name, "--name")
    if settings.trainer not in TRAINERS:
        raise IterateError(f"--trainer {settings.trainer!r}: iterate trains with {', '.join(TRAINERS)}")
    if settings.trainer == "debias" and not settings.labor_table:
        raise IterateError("--trainer debias needs --labor-table (the BLS table it grounds on and is measured by)")
    url = db_url or config.storage.url
    upgrade(url, create_dirs=url is None)
    engine = open_database(url)
    try:
        loop = _Loop(config, settings, engine, url, address, log, progress, eval_progress)
        rows = loop.play()
    finally:
        engine.dispose()
    _write_summary(rows, loop.folder, settings)
    return rows


class _Loop:
    """The stages of one `iterate`; each returns what it produced, which is stored when it finishes."""

    def __init__(
        self,
        config: SynthesisConfig,
        settings: IterateSettings,
        engine: Any,
        url: str | None,
        address: str | None,
        log: Callable[[str], None],
        progress: Any,
        eval_progress: Callable[[str, int, int], None] | None,
    ) -> None:
        from storage.lineage import finished_stages

        self.config, self.settings, self.engine, self.url, self.address = config, settings, engine, url, address
        self.log, self.progress, self.eval_progress = log, progress, eval_progress
        self.folder = prefsmith_home() / "iterations" / settings.name
        with session_scope(engine) as session:
            self.done = finished_stages(session, settings.name)

    def fingerprint(self) -> str:
        """What makes two invocations the same loop: everything but the number of rounds."""
        from configs.loading import config_hash

        s = self.settings
        described = {
            "synthesis": config_hash(self.config),
            "trainer": s.trainer,
            "training": config_hash(s.training),
            "training_overrides": list(s.training_overrides),
            "eval": [s.eval_prompts, s.eval_limit, vars(s.eval)],
            "require_verified": s.require_verified,
            "labor_table": s.labor_table,
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()

    def play(self) -> list[dict[str, Any]]:
        fingerprint = self.fingerprint()
        started = self.stage(0, "start", lambda: {"fingerprint": fingerprint})
        if started["fingerprint"] != fingerprint:
            raise IterateError(
                f"iteration {self.settings.name!r} was started with other settings (synthesis or training config, "
                "trainer, evaluation); rerun it with those, or choose another --name"
            )
        base = self.config.models[self.config.roles.target].name
        figures = self.stage(0, "evaluate", self.evaluate, base, 0)
        rows = [{"round": 0, "model": base, "eval": figures, "seconds": {"evaluate": figures["seconds"]}}]
        policy = base
        for r in range(1, self.settings.rounds + 1):
            name = checkpoint_name(self.settings.name, r)  # round r's run and the checkpoint it trains
            played = self.stage(r, "synthesize", self.synthesize, r, name, policy)
            exported = self.stage(r, "export", self.export, r, name)
            trained = self.stage(r, "train", self.train, r, name, policy, exported)
            figures = self.stage(r, "evaluate", self.assess, r, name)
            results = (played, exported, trained, figures)
            seconds = {stage: result["seconds"] for stage, result in zip(STAGES, results, strict=True)}
            rows.append(
                {"round": r, "model": name, "run": name, "export": exported, "eval": figures, "seconds": seconds}
            )
            policy = name
        return rows

    def stage(self, round_index: int, stage: str, work: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        from storage.lineage import finish_stage

        if (round_index, stage) in self.done:
            self.log(f"round {round_index} {stage}: finished before, not repeated")
            return self.done[(round_index, stage)]
        started = time.perf_counter()
        result = {**work(*args), "seconds": round(time.perf_counter() - started, 1)}
        with session_scope(self.engine) as session:
            finish_stage(session, self.settings.name, round_index, stage, result)
        self.done[(round_index, stage)] = result
        self.log(f"round {round_index} {stage}: done")
        return result

    def synthesize(self, r: int, run_id: str, policy: str) -> dict[str, Any]:
        from pipelines.synthesis import synthesize

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
        from agents.catalog import checkpoints_dir
        from configs.loading import config_hash
        from storage.lineage import register_checkpoint
        from training.train import train_preference_local

        training = self.settings.training.model_copy(update={"model": policy})
        out = checkpoints_dir() / name
        if self.settings.trainer == "debias":
            from training.debias import train_debias_model

            assert self.settings.labor_table is not None
            debiased = train_debias_model(
                exported["path"],
                self.settings.labor_table,
                self.settings.training_source,
                out,
                [*self.settings.training_overrides, f"model={policy}"],
            )
            summary = {"global_step": sum(1 for h in debiased.log_history if "loss" in h)}
        else:
            summary = train_preference_local(
                self.settings.trainer,
                training,
                exported["export_id"],
                out,
                db_url=self.url,
                source=self.settings.training_source,
            )
        with session_scope(self.engine) as session:
            register_checkpoint(
                session,
                name,
                str(out),
                base_model=policy,
                trainer=self.settings.trainer,
                config_hash=config_hash(training),
                export_id=exported["export_id"],
                iteration=self.settings.name,
                round_index=r,
            )
        for resumable in out.glob("checkpoint-*"):  # the trainer's states, kept only to resume a cut training
            shutil.rmtree(resumable, ignore_errors=True)
        return {"checkpoint": name, "path": str(out), "steps": summary["global_step"]}

    def evaluate(self, model: str, r: int) -> dict[str, Any]:
        if self.settings.trainer == "debias":
            return self.evaluate_bias(model, r)
        s = self.settings
        report = evaluate_task(model, s.eval_prompts, s.eval, limit=s.eval_limit, progress=self.eval_progress)
        write_report(report, self.folder / f"r{r}" / "eval", replace=True)
        figures = report.figures()
        return {
            "model": model,
            **{key: figures[key] for key, _ in MEASURES},
            "problems": report.problems,
            "split": report.split,
            # per problem: sampled share right, greedy right, gold ranked first (paired comparisons of rounds)
            "per_problem": [[p.sampled_correct, p.greedy_correct, p.ranked_first] for p in report.per_problem],
        }

    def evaluate_bias(self, model: str, r: int) -> dict[str, Any]:
        """`prefsmith eval bias` of `model` on the held-out occupations (the split synthesis keeps to)."""
        from training.bias_report import run_bias_report

        assert self.settings.labor_table is not None
        document = run_bias_report(
            model,
            self.settings.labor_table,
            self.folder / f"r{r}" / "eval",
            min_employed=int(self.settings.training.extra.get("min_employed", 100)),
            split_rule="prefsmith",
            limit=self.settings.eval_limit,
        )
        measured, baseline = document["conditions"][0], document["conditions"][-1]

        def points(score: dict[str, Any]) -> dict[str, Any]:
            return {"value": score["value"], "ci95": [score["ci_low"], score["ci_high"]]}

        attributes = {key: key.removeprefix("bias_") for key, _ in BIAS_MEASURES[1:]}
        return {
            "model": model,
            "measures": [list(m) for m in BIAS_MEASURES],
            "bias_overall": points(measured["overall"]),
            **{key: points(measured["metrics"][a]["bias"]) for key, a in attributes.items()},
            "perplexity": measured["perplexity"],
            "train_mean_baseline": points(baseline["overall"]),
            "problems": len(measured["shares"]),
            "split": "heldout",
        }

    def assess(self, r: int, name: str) -> dict[str, Any]:
        from storage.lineage import set_checkpoint_eval

        figures = self.evaluate(name, r)
        source = self.settings.labor_table if self.settings.trainer == "debias" else self.settings.eval_prompts
        with session_scope(self.engine) as session:
            set_checkpoint_eval(session, name, {str(source): {k: figures[k] for k, _ in measures_of(figures)}})
        return figures


def round_table(rows: list[dict[str, Any]]) -> list[str]:
    """The per-round table as text lines: pairs, their quality, and each measure with its 95% interval."""
    measures = measures_of(rows[0]["eval"])
    digits = 3 if measures == list(MEASURES) else 1  # shares of problems, or bias in points
    width = 24 if digits == 3 else 20
    lines = [
        f"{'round':<6}{'model':<28}{'pairs':>6}{'r>w':>6}  " + "  ".join(f"{label:<{width}}" for _, label in measures)
    ]
    for row in rows:
        export = row.get("export") or {}
        quality = export.get("quality") or {}
        share = quality.get("share")
        cells = []
        for key, _ in measures:
            m = row["eval"][key]
            low, high = m["ci95"]
            cells.append(f"{m['value']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]".ljust(width))
        lines.append(
            f"{row['round']:<6}{row['model'][:27]:<28}{export.get('pairs', '-')!s:>6}"
            f"{'-' if share is None else f'{share:.2f}':>6}  " + "  ".join(cells)
        )
    return lines


def _write_summary(rows: list[dict[str, Any]], folder: Path, settings: IterateSettings) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rounds.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    (folder / "rounds.md").write_text("```\n" + "\n".join(round_table(rows)) + "\n```\n")
    first = rows[0]["eval"]
    measures = measures_of(first)
    source = settings.labor_table if settings.trainer == "debias" else settings.eval_prompts
    plot_measures(
        {("base" if row["round"] == 0 else f"round {row['round']}"): _measures(row["eval"]) for row in rows},
        folder / "rounds.png",
        f"{settings.name}: {source} ({first['split']}, {first['problems']} problems)",
        measures,
        "share of problems" if measures == list(MEASURES) else "bias (points; lower is better)",
    )
