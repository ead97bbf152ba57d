"""Pairs per minute end to end, before and after the throughput work, on the same built-in arithmetic problems,
same machine, one run. Each configuration is a whole `synthesize` in a process of its own (a fresh local Ray,
the engine actor started and the model loaded, a SQLite file), timed from start to return:

- before: the code at `--before` (the last commit before the throughput issue's work), played with the
  settings that issue measured the quickstart with: transformers engine, 4 candidates, 2 rounds, 64 tokens,
  4 episodes in flight, every pair judged and graded;
- after: this code, the same game with verdicts deciding (the default), on the transformers engine and on
  the vLLM CPU engine (asynchronous, prefix caching) with 16 episodes in flight, at 4 and 8 candidates.

    python benchmarks/pairs_per_min.py [--n 24] [--before c620821] [--only TEXT]

Every accepted pair is checked against the gold answers afterwards, the same way for old and new code:
correct over wrong = the chosen answer right, the rejected one wrong. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GAME = ["game.max_rounds=2", "sampling.max_tokens=64", "sampling.temperature=0.8", "sampling.seed=0"]
VLLM = ["models.default.backend=vllm", "models.default.max_model_len=2048", "models.default.kv_cache_gb=2"]
AFTER = {
    "after: transformers, C=4, K=16": ["game.candidates=4", "ray.episodes_in_flight=16"],
    "after: vllm, C=4, K=16": [*VLLM, "game.candidates=4", "ray.episodes_in_flight=16"],
    "after: vllm, C=8, K=16": [*VLLM, "game.candidates=8", "ray.episodes_in_flight=16"],
}
BEFORE = ["game.candidates=4", "ray.episodes_in_flight=4"]

# Run in the code under test (this checkout or the `--before` one): one synthesis, its own figures as JSON.
PLAY = """
import json, sys, time
from configs import load_config
from pipelines.synthesis.service import synthesize
db, run_id, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
started = time.perf_counter()
report = synthesize(load_config("quickstart", overrides), run_id=run_id, db_url=db)
print(json.dumps({"seconds": time.perf_counter() - started, "episodes": report.metrics.episodes_done,
                  "rounds": report.metrics.rounds, "target_tokens": report.metrics.completion_tokens}))
"""


def checkout(revision: str) -> Path:
    """The tree of `revision`, unpacked into a temporary folder (no worktree left behind)."""
    folder = Path(tempfile.mkdtemp(prefix=f"prefsmith-{revision}-"))
    archive = subprocess.run(["git", "archive", revision], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def play(code: Path, n: int, overrides: list[str], db: Path, run_id: str) -> dict:
    sources = [f"prompts=[{{builtin: arithmetic, limit: {n}, seed: 0}}]"]
    if code == REPO:  # split: all = the problems the old code plays (it had no held-out split)
        sources = [f"prompts=[{{builtin: arithmetic, limit: {n}, seed: 0, split: all}}]"]
    done = subprocess.run(
        [sys.executable, "-c", PLAY, f"sqlite:///{db}", run_id, json.dumps([*sources, *GAME, *overrides])],
        cwd=code, env=dict(os.environ, PYTHONPATH=str(code)), capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"{run_id} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return figures | grade(db, run_id)


def grade(db: Path, run_id: str) -> dict:
    """The run's accepted pairs checked against their problems' gold answers."""
    from tools_effect import correct

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT pp.chosen, pp.rejected, pr.meta FROM preference_pairs pp JOIN prompts pr ON pr.id = pp.prompt_id "
            "WHERE pp.run_id = ? AND pp.accepted",
            (run_id,),
        ).fetchall()
    right_over_wrong = 0
    for chosen, rejected, meta in rows:
        answer = json.loads(meta)["answer"]
        right_over_wrong += correct(chosen, answer) and not correct(rejected, answer)
    return {"accepted": len(rows), "correct_over_wrong": right_over_wrong}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="arithmetic problems (the first n of the set, seed 0)")
    parser.add_argument("--before", default="c620821", help="git revision of the code before the throughput work")
    parser.add_argument("--only", action="append", help="run only the configurations whose label has this text")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="prefsmith-pairs-"))
    runs = {f"before ({args.before}): transformers, C=4, K=4": (checkout(args.before), BEFORE)}
    runs |= {label: (REPO, overrides) for label, overrides in AFTER.items()}
    results = {}
    for i, (label, (code, overrides)) in enumerate(runs.items()):
        if args.only and not any(text in label for text in args.only):
            continue
        r = play(code, args.n, overrides, folder / f"run{i}.db", f"pairs-{i}")
        minutes = r["seconds"] / 60
        r |= {
            "seconds": round(r["seconds"], 1),
            "share": round(r["correct_over_wrong"] / r["accepted"], 3) if r["accepted"] else None,
            "pairs_per_min": round(r["accepted"] / minutes, 2),
            "correct_over_wrong_per_min": round(r["correct_over_wrong"] / minutes, 2),
        }
        results[label] = r
        print(f"{label}: {json.dumps(r)}", flush=True)
    print(f"\n{'configuration':<44}{'accepted':>9}{'r>w':>5}{'share':>7}{'seconds':>9}{'pairs/min':>10}{'r>w/min':>9}")
    for label, r in results.items():
        share = "-" if r["share"] is None else f"{r['share']:.2f}"
        print(f"{label:<44}{r['accepted']:>9}{r['correct_over_wrong']:>5}{share:>7}{r['seconds']:>9}"
              f"{r['pairs_per_min']:>10}{r['correct_over_wrong_per_min']:>9}")
    base = next((r for label, r in results.items() if label.startswith("before")), None)
    if base and base["accepted"]:
        for label, r in results.items():
            if not label.startswith("before"):  # from the counts and seconds, not the rounded per-minute figures
                ratio = (r["accepted"] / r["seconds"]) / (base["accepted"] / base["seconds"])
                print(f"pairs/min, {label} / before: {ratio:.2f}")
    print(json.dumps({"n": args.n, "results": results}))


if __name__ == "__main__":
    main()
