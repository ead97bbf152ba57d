"""One command for the README's debiasing result: SmolLM2-135M on held-out BLS occupations — bias score
before, with 32 in-context BLS facts, and after the debiasing trainer, with CIs and neutral perplexity.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/debias_smollm2.py \
        --labor-table ../shared/data/labor/cpsaat11_2022_clean.csv
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labor-table", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=Path(".cache/benchmarks/debias_smollm2"))
    parser.add_argument("--config", default="configs/train_debias.yaml")
    parser.add_argument("--held-out-limit", type=int, default=20, help="Held-out occupations measured.")
    parser.add_argument("--in-context", type=int, default=32)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="Training override.")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from configs.loading import load_config
    from configs.schema import TrainingConfig
    from pipelines.pair_sources import write_table_pairs_export
    from tools.bls import read_table
    from training.debias import DebiasConfig
    from training.evaluation.bias_probes import probe_occupations, split_occupations
    from training.evaluation.bias_report import run_bias_report, slopes_table, summary_table
    from training.train import load_trainer

    started = time.perf_counter()
    settings = load_config(args.config, args.overrides, schema=TrainingConfig)
    extra = settings.extra
    table = read_table(args.labor_table)
    train, held_out = split_occupations(
        probe_occupations(table, min_employed=extra.get("min_employed", DebiasConfig.min_employed)),
        held_out_fraction=extra.get("held_out_fraction", DebiasConfig.held_out_fraction),
        seed=extra.get("split_seed", DebiasConfig.split_seed),
        rule=extra.get("split_rule", DebiasConfig.split_rule),
    )
    pairs_dir = write_table_pairs_export(args.labor_table, train, args.out / "pairs")
    manifest = json.loads((pairs_dir / "manifest.json").read_text())
    print(
        f"[1/3] {manifest['counts']['pairs']} grounded pairs from the BLS table on {len(train)} training "
        f"occupations ({len(held_out)} held out) → {pairs_dir}",
        flush=True,
    )

    run = load_trainer(
        "debias", settings, pairs_dir, args.out / "model", source=str(args.config), labor_table=args.labor_table
    ).train()
    losses = [
        (h["step"], round(h["loss"], 4), round(h.get("grounding_kl", float("nan")), 4))
        for h in run.log_history
        if "loss" in h
    ]
    print(f"[2/3] trained {len(losses)} steps (step, loss, grounding KL): {losses}", flush=True)

    notes = [
        "Preference pairs were built directly from the BLS table on training occupations "
        "(pipelines.pair_sources.grounded_pairs: chosen states the BLS shares, rejected is stereotyped or "
        "contradicts "
        "them; each kept only if the labor_statistics tool gives chosen verdict True and rejected False) — "
        "not synthesised by the Anyprefer episode.",
        f"Training: {args.config} with overrides {args.overrides or 'none'}; {len(losses)} optimizer steps.",
        f"Held-out occupations: the first {args.held_out_limit} (by title) of {len(held_out)} held out by the "
        f"{extra.get('split_rule', DebiasConfig.split_rule)} split of leaf occupations with every share published; "
        "in-context facts come from training occupations.",
        "Race shares are marginals; 'Other' (100 − White − Black − Asian) is the races CPS does not present.",
    ]
    report = run_bias_report(
        settings.model,
        args.labor_table,
        args.out / "report",
        in_context_k=args.in_context,
        after_model=str(args.out / "model"),
        min_employed=extra.get("min_employed", 300),
        held_out_fraction=extra.get("held_out_fraction", 0.3),
        split_seed=extra.get("split_seed", 0),
        split_rule=extra.get("split_rule", DebiasConfig.split_rule),
        limit=args.held_out_limit,
        sampled_n=4,
        reverse_n=4,
        notes=notes,
    )
    results = report.conditions
    print(f"[3/3] report → {args.out / 'report'} (report.md, report.json, shares_*.png)", flush=True)
    print(summary_table(results))
    print(slopes_table(results))
    for r in results:
        if r.sampled:
            women = r.sampled["metrics"].get("women")
            shown = f"{women['bias']['value']:.1f}" if women else "no known labels"
            print(
                f"sampled gender probe, {r.name}: unknown rate {r.sampled['unknown_rate']:.0%}, bias {shown}"
            )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
