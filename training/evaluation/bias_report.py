"""Bias evaluation (`prefsmith eval bias`): exact shares of one or more model conditions (before, in-context facts,
after training) on held-out occupations, with CIs, amplification, KS, neutral-text perplexity, as JSON, Markdown and
PNG; and the evaluation a loop runs on every round's model.

Every condition is measured on the same held-out occupations with the same templates and seed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from storage.evaluations import (
    BIAS_MEASURES,
    BiasReport,
    BiasScore,
    ConditionResult,
    EvaluationRecord,
    Measure,
)
from tools.bls import ATTRIBUTE_LABELS, ATTRIBUTES, LaborTable, OccupationRow, read_table
from training.evaluation.base import EvalError, EvalKind, Evaluation
from training.evaluation.bias_metrics import attribute_metrics, overall_bias
from training.evaluation.bias_probes import (
    ExactProbe,
    facts_block,
    neutral_perplexity,
    probe_occupations,
    reverse_probe,
    sampled_shares,
    split_occupations,
)


@dataclass(frozen=True)
class ModelCondition:
    name: str
    model: str
    in_context_k: int = 0


def _load(model_name: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agents.catalog import resolve_model

    torch.set_num_threads(1)
    path = resolve_model(model_name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, tokenizer


def measure(
    condition: ModelCondition,
    rows: list[OccupationRow],
    fact_pool: list[OccupationRow],
    *,
    seed: int = 0,
    sampled_n: int = 0,
    sampled_occupations: int = 8,
    reverse_n: int = 0,
    table: LaborTable | None = None,
) -> ConditionResult:
    """Exact shares, metrics and perplexity of one condition (plus a small sampled gender probe)."""
    started = time.perf_counter()
    model, tokenizer = _load(condition.model)
    shares = ExactProbe(model, tokenizer).shares(
        rows, in_context_k=condition.in_context_k, fact_pool=fact_pool, seed=seed
    )
    sampled: dict[str, Any] = {}
    if sampled_n > 0:
        subset = rows[:sampled_occupations]
        preamble = facts_block(fact_pool, "gender", condition.in_context_k, {r.title for r in rows}, seed)
        result = sampled_shares(model, tokenizer, subset, "gender", n=sampled_n, seed=seed, preamble=preamble)
        sampled_metrics = attribute_metrics(result.shares(), subset, seed=seed)
        sampled = {
            "dimension": "gender",
            "n_per_occupation": sampled_n,
            "counts": result.counts,
            "unknown_rate": result.unknown_rate(),
            "metrics": {a: asdict(m) for a, m in sampled_metrics.items()},
            "examples": {t: c[:3] for t, c in list(result.completions.items())[:3]},
        }
    reverse: dict[str, Any] = {}
    if reverse_n > 0 and table is not None:
        reverse = reverse_probe(model, tokenizer, table, n=reverse_n, seed=seed)
    return ConditionResult(
        name=condition.name,
        model=condition.model,
        in_context_k=condition.in_context_k,
        shares=shares,
        metrics=attribute_metrics(shares, rows, seed=seed),
        overall=overall_bias(shares, rows, seed=seed),
        perplexity=neutral_perplexity(model, tokenizer),
        sampled=sampled,
        reverse=reverse,
        seconds=time.perf_counter() - started,
    )


def held_out_rows(
    table: LaborTable,
    *,
    min_employed: int,
    held_out_fraction: float,
    split_seed: int,
    limit: int | None,
    split_rule: str = "prefsmith",
) -> tuple[list[OccupationRow], list[OccupationRow]]:
    """(train, held-out) occupations; `limit` keeps the first held-out ones in title order (cost control)."""
    train, held_out = split_occupations(
        probe_occupations(table, min_employed=min_employed),
        held_out_fraction=held_out_fraction,
        seed=split_seed,
        rule=split_rule,
    )
    return train, held_out[:limit] if limit else held_out


def write_report(
    out: Path,
    table: LaborTable,
    results: list[ConditionResult],
    rows: list[OccupationRow],
    notes: list[str],
    settings: dict[str, Any],
) -> BiasReport:
    """report.json, report.md and PNG plots in `out`; returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    report = BiasReport(
        labor_table=str(table.source),
        labor_year=table.year,
        held_out_occupations=[r.title for r in rows],
        bls={r.title: {a: r.share(a) for a in ATTRIBUTES} for r in rows},
        settings=settings,
        notes=notes,
        conditions=results,
    )
    (out / "report.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    plots = _plot(out, results, rows)
    (out / "report.md").write_text(_markdown(table, results, rows, notes, settings, plots), encoding="utf-8")
    return report


def constant_baseline(
    train: list[OccupationRow], rows: list[OccupationRow], seed: int = 0
) -> ConditionResult:
    """No model: every held-out occupation gets the mean share of the training occupations. A debiased model
    that only matches this has learned base rates, not occupations."""
    means = {a: sum(_known(r, a) for r in train) / len(train) for a in ATTRIBUTES}
    shares = {r.title: dict(means) for r in rows}
    return ConditionResult(
        name="baseline: train mean",
        model="(none)",
        in_context_k=0,
        shares=shares,
        metrics=attribute_metrics(shares, rows, seed=seed),
        overall=overall_bias(shares, rows, seed=seed),
        perplexity=None,
    )


def _known(row: OccupationRow, attribute: str) -> float:
    value = row.share(attribute)
    assert value is not None, "probe occupations have every share published"
    return value


def slopes_table(results: list[ConditionResult]) -> str:
    """Markdown table: amplification slope and KS statistic per attribute."""
    head = ["condition"] + [f"{ATTRIBUTE_LABELS[a]} slope / KS" for a in ATTRIBUTES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.name]
        for a in ATTRIBUTES:
            m = r.metrics.get(a)
            cells.append(f"{m.amplification_slope:.2f} / {m.ks_statistic:.2f}" if m else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(score: BiasScore) -> str:
    return f"{score.value:.1f} [{score.ci_low:.1f}, {score.ci_high:.1f}]"


def summary_table(results: list[ConditionResult]) -> str:
    """Markdown table: bias score with 95% CI per attribute and overall, slope (women), perplexity."""
    head = (
        ["condition", "overall"]
        + [ATTRIBUTE_LABELS[a] for a in ATTRIBUTES]
        + ["slope (women)", "KS (women)", "perplexity"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.name, _fmt(r.overall)]
        cells += [_fmt(r.metrics[a].bias) if a in r.metrics else "–" for a in ATTRIBUTES]
        women = r.metrics.get("women")
        cells += [
            f"{women.amplification_slope if women else float('nan'):.2f}",
            f"{women.ks_statistic if women else 0:.2f}",
            "–" if r.perplexity is None else f"{r.perplexity:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown(
    table: LaborTable,
    results: list[ConditionResult],
    rows: list[OccupationRow],
    notes: list[str],
    settings: dict[str, Any],
    plots: list[str],
) -> str:
    parts = [
        "# Occupational bias report",
        "",
        f"BLS CPS table 11 ({table.year or 'year unknown'}) from `{table.source.name}`; "
        f"{len(rows)} held-out occupations; exact shares from multiple-choice option probabilities "
        "(2 templates per dimension, averaged). Bias score = mean |model − BLS| in percentage points "
        "(lower is better), 95% bootstrap CI over occupations.",
        "",
        summary_table(results),
        "",
        "Amplification slope of (p − 50) on (s − 50) (1 = faithful, > 1 exaggerates, < 1 flattens, 0 = the "
        "same share for every occupation) and Kolmogorov–Smirnov statistic:",
        "",
        slopes_table(results),
        "",
    ]
    for r in results:
        if r.sampled:
            m = r.sampled["metrics"].get("women")
            score = _fmt(BiasScore(**m["bias"])) if m else "no known labels"
            parts.append(
                f"- sampled gender probe, {r.name}: {r.sampled['n_per_occupation']} completions × "
                f"{len(r.sampled['counts'])} occupations, unknown rate {r.sampled['unknown_rate']:.0%}, "
                f"bias (women) {score}"
            )
    for r in results:
        if r.reverse:
            shown = "; ".join(
                f"{group}: {v['matched']}/{len(v['completions'])} matched"
                + (f", mean BLS % women {v['mean_bls_women_share']:.0f}" if v["mean_bls_women_share"] else "")
                for group, v in r.reverse.items()
            )
            parts.append(f'- reverse probe "The {{group}} works as a", {r.name}: {shown}')
    parts += ["", "## Settings", "", "```json", json.dumps(settings, indent=2), "```", "", "## Notes", ""]
    parts += [f"- {n}" for n in notes]
    parts += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(parts) + "\n"


def _plot(out: Path, results: list[ConditionResult], rows: list[OccupationRow]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for attribute in ATTRIBUTES:
        fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.2), squeeze=False)
        for ax, r in zip(axes[0], results, strict=True):
            s = [row.share(attribute) for row in rows]
            p = [r.shares[row.title][attribute] for row in rows]
            ax.scatter(s, p, s=14, alpha=0.8)
            ax.plot([0, 100], [0, 100], color="grey", linewidth=1, linestyle="--")
            ax.set_xlim(0, 100)
            ax.set_ylim(0, 100)
            bias = r.metrics[attribute].bias.value
            ax.set_title(f"{r.name}: bias {bias:.1f} pts", fontsize=10)
            ax.set_xlabel(f"BLS % {ATTRIBUTE_LABELS[attribute]}")
            ax.set_ylabel("model %")
        fig.tight_layout()
        name = f"shares_{attribute}.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        written.append(name)
    return written


def run_bias_report(
    model: str,
    labor_table: str | Path,
    out: str | Path,
    *,
    in_context_k: int = 0,
    after_model: str | None = None,
    min_employed: int = 100,
    held_out_fraction: float = 0.3,
    split_seed: int = 0,
    split_rule: str = "prefsmith",
    limit: int | None = None,
    sampled_n: int = 0,
    reverse_n: int = 0,
    seed: int = 0,
    notes: list[str] | None = None,
) -> BiasReport:
    """Measure `model` (and with k in-context facts, and `after_model`) on held-out occupations; write the
    report to `out`."""
    table = read_table(labor_table)
    train, rows = held_out_rows(
        table,
        min_employed=min_employed,
        held_out_fraction=held_out_fraction,
        split_seed=split_seed,
        limit=limit,
        split_rule=split_rule,
    )
    conditions = [ModelCondition("before", model)]
    if in_context_k > 0:
        conditions.append(ModelCondition(f"in-context k={in_context_k}", model, in_context_k))
    if after_model:
        conditions.append(ModelCondition("after training", after_model))
    # The reverse probe names no occupation to put facts about in context, so the in-context condition
    # would only repeat "before": it runs on the conditions without facts.
    results = [
        measure(
            c,
            rows,
            train,
            seed=seed,
            sampled_n=sampled_n,
            table=table,
            reverse_n=reverse_n if c.in_context_k == 0 else 0,
        )
        for c in conditions
    ]
    results.append(constant_baseline(train, rows, seed=seed))
    settings = {
        "model": model,
        "after_model": after_model,
        "in_context_k": in_context_k,
        "min_employed_thousands": min_employed,
        "held_out_fraction": held_out_fraction,
        "split_seed": split_seed,
        "split_rule": split_rule,
        "held_out_limit": limit,
        "sampled_n": sampled_n,
        "reverse_n": reverse_n,
        "seed": seed,
        "fact_pool": "training occupations only (never a held-out one)",
    }
    return write_report(Path(out), table, results, rows, notes or [], settings)


class BiasEvaluation(Evaluation):
    """`prefsmith eval bias` of each model on the held-out occupations of the split synthesis keeps to."""

    kind: ClassVar[EvalKind] = "bias"
    ylabel: ClassVar[str] = "bias (points; lower is better)"
    digits: ClassVar[int] = 1

    @property
    def source(self) -> str:
        if self.plan.labor_table is None:
            raise EvalError("bias evaluation needs a labor table (--labor-table)")
        return self.plan.labor_table

    def run(self, model: str, out: Path) -> EvaluationRecord:
        report = run_bias_report(
            model,
            self.source,
            out,
            min_employed=self.plan.min_employed,
            split_rule="prefsmith",
            limit=self.plan.limit,
        )
        measured, baseline = report.conditions[0], report.conditions[-1]

        def points(score: BiasScore) -> Measure:
            return Measure(score.value, (score.ci_low, score.ci_high))

        attributes = {key: key.removeprefix("bias_") for key, _ in BIAS_MEASURES[1:]}
        return EvaluationRecord(
            model=model,
            measures=BIAS_MEASURES,
            scores={
                "bias_overall": points(measured.overall),
                **{key: points(measured.metrics[a].bias) for key, a in attributes.items()},
            },
            problems=len(measured.shares),
            split="heldout",
            perplexity=measured.perplexity,
            baseline=points(baseline.overall),
        )
