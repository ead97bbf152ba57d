"""Compute only where it can change the decision: the same arithmetic problems played with the quickstart's
models and tools, once with `game.verdicts_decide` on (the judge model is not asked where every candidate
has a tool verdict; a verified pair is accepted without the reward model) and once off (every pair judged
and graded, as before). Same seeds, same process, side by side.

    python benchmarks/verdicts_decide.py [--n 16] [--candidates 3] [--rounds 2] [--max-tokens 48]

Reports pairs per minute, correct-over-wrong pairs per minute (chosen right and rejected wrong by the gold
answers, checked afterwards), their share, and the engine calls spent. Printed, never asserted.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    from tools_effect import play, play_arguments

    args = play_arguments(__doc__.splitlines()[0], n=16, in_flight=4)
    import torch

    torch.set_num_threads(1)
    runs = {
        "decide": play(args, with_tools=True, extra=("game.verdicts_decide=true",)),
        "judge every pair": play(args, with_tools=True, extra=("game.verdicts_decide=false",)),
    }
    print(
        f"{'verdicts':<18}{'accepted':>9}{'verified':>9}{'right>wrong':>12}{'share':>7}{'wrong>right':>12}"
        f"{'engine calls':>13}{'seconds':>9}{'pairs/min':>10}{'r>w/min':>9}"
    )
    for label, r in runs.items():
        share = "-" if r["share_correct_over_wrong"] is None else f"{r['share_correct_over_wrong']:.2f}"
        print(
            f"{label:<18}{r['accepted_pairs']:>9}{r['verified_pairs']:>9}{r['chosen_correct_rejected_wrong']:>12}"
            f"{share:>7}{r['chosen_wrong_rejected_correct']:>12}{r['engine_calls']:>13}{r['seconds']:>9}"
            f"{r['pairs_per_min']:>10}{r['correct_over_wrong_per_min']:>9}"
        )
    on, off = runs["decide"], runs["judge every pair"]
    print(f"pairs/min ratio (decide / judge every pair): {on['pairs_per_min'] / max(off['pairs_per_min'], 1e-9):.2f}")
    print(json.dumps({"settings": vars(args), "results": runs}))


if __name__ == "__main__":
    main()
