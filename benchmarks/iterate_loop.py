"""Does training on prefsmith's pairs make the model better? `prefsmith iterate` on the built-in arithmetic set:
the base model, then each round's checkpoint (synthesize with the current policy → export → DPO → evaluate),
all evaluated on the same held-out problems (never played by synthesis).

    python benchmarks/iterate_loop.py [--prompts 48] [--rounds 2] [--eval-limit 50] [--eval-samples 4]

Reports, per round: pairs and their quality (share of accepted pairs correct over wrong, with and without
`--require-verified`; the reward model's agreement with the verdicts where both exist), then sampled accuracy,
greedy accuracy and answer ranking with 95% bootstrap intervals, and each round's change from the base model on
the same problems (paired bootstrap). Printed, never asserted: the figures are what they are.
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
    parser.add_argument("--prompts", type=int, default=48, help="arithmetic problems played each round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=5e-6)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--eval-limit", type=int, default=50)
    parser.add_argument("--eval-samples", type=int, default=4)
    parser.add_argument("--all-pairs", action="store_true", help="train on every accepted pair, not only verified")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="prefsmith-iterate-bench-"))
    os.environ["PREFSMITH_HOME"] = str(home)
    from configs import load_config
    from configs.schema import TrainingConfig
    from pipelines.iterate import IterateSettings, iterate, round_table
    from storage.evaluations import TASK_MEASURES as MEASURES
    from training.evaluation.base import EvalSettings
    from training.evaluation.task import paired_difference

    config = load_config(
        "quickstart",
        [
            f"prompts=[{{builtin: arithmetic, limit: {args.prompts}, seed: 0}}]",
            f"game.candidates={args.candidates}",
            "game.max_rounds=1",
            f"sampling.max_tokens={args.max_tokens}",
            "sampling.temperature=1.0",
            "ray.episodes_in_flight=16",
        ],
    )
    training = load_config(
        "train_dpo",
        [f"learning_rate={args.learning_rate}", f"num_train_epochs={args.epochs}"],
        schema=TrainingConfig,
    )
    settings = IterateSettings(
        name="bench",
        rounds=args.rounds,
        trainer="dpo",
        training=training,
        training_source="train_dpo",
        eval_prompts="builtin:arithmetic",
        eval_limit=args.eval_limit,
        eval=EvalSettings(samples=args.eval_samples, max_tokens=args.max_tokens, seed=0),
        require_verified=not args.all_pairs,
    )
    started = time.perf_counter()
    rows = iterate(config, settings, db_url=f"sqlite:///{home / 'bench.db'}", log=print)
    seconds = time.perf_counter() - started
    print()
    for line in round_table(rows):
        print(line)
    base = rows[0]["eval"]["per_problem"]
    changes = {}
    for row in rows[1:]:
        per = row["eval"]["per_problem"]
        changes[row["model"]] = {
            key: paired_difference([float(p[i]) for p in per], [float(b[i]) for b in base], seed=i).__dict__
            for i, (key, _) in enumerate(MEASURES)
        }
        quality = row["export"]["quality"]
        agreement = quality["reward_vs_verdicts"]
        print(
            f"round {row['round']}: {quality['accepted']} accepted pairs, {quality['correct_over_wrong']} correct over "
            f"wrong (share {quality['share']}); trained on {row['export']['pairs']} "
            f"({'verified only' if settings.require_verified else 'all accepted'}); reward model agreed with the "
            f"verdicts on {agreement['agree']} of {agreement['pairs']} graded pairs with verdicts"
        )
        for key, label in MEASURES:
            m = changes[row["model"]][key]
            low, high = m["ci95"]
            print(f"  {label} change from base: {m['value']:+.3f} (95% interval {low:+.3f} to {high:+.3f})")
    print(f"total {seconds / 60:.1f} min; seconds by round and stage: {[r['seconds'] for r in rows]}")
    print(
        json.dumps(
            {"settings": vars(args), "rows": rows, "changes_from_base": changes, "seconds": round(seconds, 1)},
            default=str,
        )
    )


if __name__ == "__main__":
    main()
