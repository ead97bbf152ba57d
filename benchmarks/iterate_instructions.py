"""Does training on prefsmith's verified instruction-following pairs make the model follow instructions better?
`prefsmith iterate` on configs/instructions.yaml: round 0 measures the base model on the held-out instructions
split, then each round synthesizes with the current policy → exports → DPO (or SparsePO) → evaluates.

    python benchmarks/iterate_instructions.py [--prompts 64] [--rounds 2] [--eval-limit 50] [--trainer sparsepo]
        [--learning-rate 5e-6] [--epochs 2]
    python benchmarks/iterate_instructions.py --quick     # 12 prompts, 1 round, 12 evaluation prompts

Reports, per round: IFEval's four figures with 95% bootstrap intervals, each round's change from the base model
on the same prompts (paired bootstrap over prompts), and greedy accuracy on the held-out arithmetic problems (the
check that following instructions was not bought by forgetting arithmetic). Printed, never asserted. The
checkpoints stay under $PREFSMITH_HOME/checkpoints/ (a fresh temporary home unless PREFSMITH_HOME is set).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64, help="instruction prompts played each round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trainer", choices=["dpo", "sparsepo"], default="dpo")
    # The trainer's preset (lr 5e-7, one epoch) barely moves a model on a few dozen pairs: the arithmetic loop
    # benchmark's settings by default.
    parser.add_argument("--learning-rate", type=float, default=5e-6)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--eval-limit", type=int, default=50, help="held-out instruction prompts evaluated")
    parser.add_argument("--eval-max-tokens", type=int, default=512)
    parser.add_argument("--arithmetic-limit", type=int, default=50, help="held-out arithmetic problems per round")
    parser.add_argument("--backend", choices=["auto", "vllm", "transformers"], default="auto")
    parser.add_argument("--quick", action="store_true", help="12 prompts, 1 round, 12 evaluation prompts, 256 tokens")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.rounds, args.eval_limit, args.eval_max_tokens, args.arithmetic_limit = 12, 1, 12, 256, 20

    home = Path(os.environ.get("PREFSMITH_HOME") or tempfile.mkdtemp(prefix="prefsmith-instructions-bench-"))
    os.environ["PREFSMITH_HOME"] = str(home)
    from configs import load_config
    from configs.schema import TrainingConfig
    from pipelines.iterate import IterateSettings, iterate, round_table
    from pipelines.prompt_sources import load_problems
    from storage.evaluations import INSTRUCTION_MEASURES
    from training.evaluation.base import EvalSettings
    from training.evaluation.instructions import paired_change
    from training.evaluation.task import evaluate_task

    config = load_config("instructions", [f"prompts=[{{builtin: instructions, limit: {args.prompts}, seed: 0}}]"])
    trainer_config = f"train_{args.trainer}"
    settings = IterateSettings(
        name="bench-instructions",
        rounds=args.rounds,
        trainer=args.trainer,
        training=load_config(
            trainer_config,
            [f"learning_rate={args.learning_rate}", f"num_train_epochs={args.epochs}"],
            schema=TrainingConfig,
        ),
        training_source=trainer_config,
        eval_prompts="builtin:instructions",
        eval_limit=args.eval_limit,
        eval=EvalSettings(samples=1, max_tokens=args.eval_max_tokens, seed=0),
        eval_backend=args.backend,
        require_verified=True,
    )
    started = time.perf_counter()
    rows = iterate(config, settings, db_url=f"sqlite:///{home / 'bench.db'}", log=print)
    print()
    for line in round_table(rows):
        print(line)
    base = rows[0]["eval"]["per_problem"]
    arithmetic = load_problems("builtin:arithmetic", args.arithmetic_limit, 0)
    summary = []
    for row in rows:
        change = {} if row["round"] == 0 else {
            key: m.__dict__ for key, m in paired_change(row["eval"]["per_problem"], base, seed=row["round"]).items()
        }
        solved = evaluate_task(row["model"], arithmetic, EvalSettings(samples=1, temperature=0.0, seed=0))
        summary.append({"round": row["round"], "model": row["model"], "change_from_base": change,
                        "arithmetic_greedy": solved.greedy_accuracy.__dict__, "pairs": (row.get("export") or {})})
        print(f"round {row['round']} ({row['model']}): held-out arithmetic greedy accuracy "
              f"{solved.greedy_accuracy.value:.3f} [{solved.greedy_accuracy.ci95[0]:.3f}, "
              f"{solved.greedy_accuracy.ci95[1]:.3f}] on {solved.problems} problems")
        for key, label in INSTRUCTION_MEASURES if change else ():
            low, high = change[key]["ci95"]
            print(f"  {label} change from base: {change[key]['value']:+.3f} (95% interval {low:+.3f} to {high:+.3f})")
    seconds = time.perf_counter() - started
    print(f"checkpoints: {home / 'checkpoints'}; total {seconds / 60:.1f} min")
    print(json.dumps({"settings": vars(args), "rows": rows, "summary": summary, "seconds": round(seconds, 1)},
                     default=str))


if __name__ == "__main__":
    main()
