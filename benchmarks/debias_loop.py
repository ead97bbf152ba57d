"""Debiasing from the loop: occupation prompts played by the Anyprefer game with the labor statistics tool
(configs/debias.yaml, SmolLM2 in every role), the export trained on by the debiasing trainer, and the bias of
the base model, the base model with BLS facts in context, and the trained model measured on held-out
occupations (never played: the split synthesis keeps to) beside the train-mean baseline.

    python benchmarks/debias_loop.py --labor-table ../shared/data/labor/cpsaat11_2022_clean.csv [--prompts 36]

Goals the issue set (printed, never asserted): beat the train-mean baseline overall, halve the gender score,
perplexity within +2%.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labor-table", required=True, type=Path)
    parser.add_argument("--prompts", type=int, default=36, help="occupation prompts played (3 per occupation)")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--held-out-limit", type=int, default=20)
    parser.add_argument("--in-context", type=int, default=32)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="Training override.")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="prefsmith-debias-loop-"))
    os.environ["PREFSMITH_HOME"] = str(home)
    import torch

    torch.set_num_threads(1)
    from configs import load_config
    from pipelines.export import export_run
    from pipelines.synthesis.service import synthesize
    from storage.db import session_scope
    from storage.migrate import open_database
    from storage.preference_sets import load_preference_set
    from storage.queries import pair_quality
    from training.debias import DebiasSummary
    from training.evaluation.bias_report import run_bias_report, summary_table
    from training.train import load_trainer_from_file

    table = str(args.labor_table.resolve())
    url = f"sqlite:///{home / 'debias.db'}"
    config = load_config(
        "debias",
        [
            f"tools.labor_table={table}",
            f"prompts=[{{builtin: occupations, limit: {args.prompts}}}]",
            f"game.candidates={args.candidates}",
            "game.max_rounds=1",
            f"sampling.max_tokens={args.max_tokens}",
            "ray.episodes_in_flight=16",
        ],
    )
    started = time.perf_counter()
    report = synthesize(config, run_id="debias-loop", db_url=url)
    print(f"[1/4] {report.summary()}", flush=True)
    engine = open_database(url)
    try:
        export = export_run(engine, "debias-loop", home / "export", fmt="parquet")
        with session_scope(engine) as session:
            quality = pair_quality(session, "debias-loop")
    finally:
        engine.dispose()
    pairs = load_preference_set(export.path)
    dimensions = {d: list(pairs["dimension"]).count(d) for d in sorted(set(pairs["dimension"]))}
    print(
        f"[2/4] export {export.id}: {export.num_pairs} pairs about {len(set(pairs['occupation']))} occupations "
        f"by dimension {dimensions}; correct over wrong by the labor tool: {quality['correct_over_wrong']} "
        f"(share {quality['share']}); reward model vs verdicts: {quality['reward_vs_verdicts']}",
        flush=True,
    )
    run = load_trainer_from_file(
        "debias", "train_debias", args.overrides, export.path, home / "model", labor_table=table
    ).train()
    assert isinstance(run, DebiasSummary)
    losses = [(h["step"], round(h["loss"], 4)) for h in run.log_history if "loss" in h]
    print(
        f"[3/4] trained {len(losses)} steps on the synthesized pairs ({run.pairs_left_out} about held-out "
        f"occupations left out): {losses}",
        flush=True,
    )
    report = run_bias_report(
        config.models["default"].name,
        table,
        home / "report",
        in_context_k=args.in_context,
        after_model=str(home / "model"),
        min_employed=300,
        split_rule="prefsmith",
        limit=args.held_out_limit,
        notes=[f"Pairs synthesized by `prefsmith synthesize --config debias` ({export.num_pairs} exported)."],
    )
    results = {c.name: c for c in report.conditions}
    print(f"[4/4] report → {home / 'report'}", flush=True)
    print(summary_table(list(results.values())))
    before, after = results["before"], results["after training"]
    baseline = results["baseline: train mean"]
    women = {name: r.metrics["women"].bias.value for name, r in results.items()}
    print(
        f"overall: after {after.overall.value:.1f} vs train-mean baseline {baseline.overall.value:.1f} "
        f"(goal: below it); gender: before {women['before']:.1f} → after {women['after training']:.1f} "
        f"(goal: at most {women['before'] / 2:.1f}); perplexity: {before.perplexity:.2f} → {after.perplexity:.2f} "
        f"({(after.perplexity / before.perplexity - 1) * 100:+.1f}%, goal: ≤ +2%)"
    )
    print(f"total {(time.perf_counter() - started) / 60:.1f} min")
    print(
        json.dumps(
            {
                "settings": {k: str(v) for k, v in vars(args).items()},
                "pairs": export.num_pairs,
                "dimensions": dimensions,
                "quality": quality,
                "bias": {
                    c["name"]: {k: c[k] for k in ("overall", "metrics", "perplexity")}
                    for c in report.as_dict()["conditions"]
                },
            },
            default=str,
        )
    )


if __name__ == "__main__":
    main()
