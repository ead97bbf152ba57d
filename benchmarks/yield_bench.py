"""Yield: verified pairs per 1,000 target tokens and per minute, before and after sampling by expected yield, same
model and seeds, side by side in one run, on two families:

- arithmetic: the built-in arithmetic problems with the quickstart's game (4 candidates a round, 3 rounds, 48
  tokens, temperature 0.6). *before*: every candidate in one step, no stop, every round played (what the game did
  before this work); *after*: stepped sampling (up to 8 candidates a round in steps of 4), each prompt's prior
  pooled from the run's other prompts, an episode ended once another round is unlikely to bring the side its
  agreeing verdicts lack (`game.round_threshold` 0.2), prompts retired after 8 samples of one verdict, and
  candidates that stop after the family's final sentence or at a false step no continuation can undo;
- one-step arithmetic (`--one-step N`): the quickstart's own problems (one operation each, where SmolLM2-135M
  is right about a third of the time), the same two games;
- instructions (`--instructions N`): the built-in instruction-following prompts with configs/instructions.yaml,
  before and after as above (that family defines no final form, so no stop);
- a distilabel 1.5.3 peer (benchmarks/distilabel_peer.py) on the arithmetic problems, in its own venv, which this
  script builds the first time under .cache/: 4 generations at temperature 0.8 and 64 new tokens, UltraFeedback's
  overall rating by the same model, FormatTextGenerationDPO; a valid pair is one whose ratings differ.

    python benchmarks/yield_bench.py [--n 8] [--one-step 0] [--instructions 0] [--seed 0] [--only TEXT] [--no-peer]

Each prefsmith configuration is a whole `synthesize` in a process of its own (a local Ray, the engine loaded, a
SQLite file). Every accepted pair is checked against the gold answers afterwards (share clean = chosen right,
rejected wrong), the peer's pairs the same way; an instruction pair is clean when its chosen answer passes every
instruction strictly and its rejected one does not, by the if-verifiable checkers. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pairs_per_min import grade
from tools_effect import correct

REPO = Path(__file__).resolve().parents[1]
PEER_VENV = REPO / ".cache" / "distilabel-1.5.3"
# What the peer's venv holds: distilabel 1.5.3 with the outlines its structured outputs need, on the CPU torch.
PEER_PACKAGES = [["torch==2.13.0"], ["setuptools<81", "distilabel==1.5.3", "outlines==0.1.14", "transformers==5.24.*"]]
# before: what the game did before sampling by yield, whatever the presets now turn on
BEFORE = ["game.stop_at_final_answer=false", "game.pooled_prior=false", "game.round_threshold=null",
          "game.max_candidates=null", "game.retire_after=null", "game.abandon_false_steps=false"]
YIELD = ["game.step_candidates=4", "game.retire_after=8", "game.pooled_prior=true", "game.round_threshold=0.2"]
AFTER = ["game.max_candidates=8", *YIELD, "game.stop_at_final_answer=true", "game.abandon_false_steps=true"]
# the value rule: steps of 1 to 4 and rounds only while their expected pairs pay at the family's own yield, the
# prior's weight fitted to how far the prompts' pass rates spread
VALUE = ["game.step_rule=value", "game.prior_strength=auto"]
FAMILY = {"arithmetic": "arithmetic", "arithmetic_one_step": "one-step arithmetic", "instructions": "instructions"}
RUNS = {  # label: (preset, prompt source, overrides)
    "before: arithmetic, one step, every round": ("quickstart", "arithmetic", BEFORE),
    "after: arithmetic, stepped, pooled prior, early end": ("quickstart", "arithmetic", AFTER),
    "before: one-step arithmetic, one step, every round": ("quickstart", "arithmetic_one_step", BEFORE),
    "after: one-step arithmetic, stepped, pooled prior, early end": ("quickstart", "arithmetic_one_step", AFTER),
    "before: instructions, one step, every round": ("instructions", "instructions", BEFORE),
    "after: instructions, stepped, pooled prior, early end": ("instructions", "instructions",
                                                              ["game.max_candidates=8", *YIELD]),
    "after, value rule: arithmetic": ("quickstart", "arithmetic", [*AFTER, *VALUE]),
    "after, value rule: one-step arithmetic": ("quickstart", "arithmetic_one_step", [*AFTER, *VALUE]),
    "after, value rule: instructions": ("instructions", "instructions", ["game.max_candidates=8", *YIELD, *VALUE]),
}

PLAY = """
import json, sys, time
from configs import load_config
from pipelines.synthesis.service import synthesize
db, run_id, preset, overrides = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
started = time.perf_counter()
report = synthesize(load_config(preset, overrides), run_id=run_id, db_url=db)
m = report.metrics
print(json.dumps({"seconds": time.perf_counter() - started, "episodes": m.episodes_done, "rounds": m.rounds,
                  "verified": m.verified, "target_tokens": m.completion_tokens, "mastered": m.mastered,
                  "out_of_reach": m.out_of_reach}))
"""


def play(preset: str, source: str, n: int, overrides: list[str], db: Path, run_id: str, seed: int = 0) -> dict:
    sources = [f"prompts=[{{builtin: {source}, limit: {n}, seed: {seed}}}]"]
    done = subprocess.run(
        [sys.executable, "-c", PLAY, f"sqlite:///{db}", run_id, preset, json.dumps([*sources, *overrides])],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"{run_id} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    graded = grade_instructions(db, run_id) if source == "instructions" else grade(db, run_id)
    return figures | graded | spread(db, run_id)


def spread(db: Path, run_id: str) -> dict:
    """How alike the run's prompts are for the model: the pass rate over all checked candidates, and the prior
    weight under which each prompt's own counts are likeliest (`VerdictPool.strength`, what `game.prior_strength:
    auto` fits: large when the prompts pass at about one rate, small when their rates spread). No allocation of
    samples across prompts alike can beat about that pass rate in pairs per candidate."""
    import sqlite3

    from pipelines.sampling import PassCounts, VerdictPool

    pool = VerdictPool()
    with sqlite3.connect(db) as conn:
        for prompt, samples, passes in conn.execute(
            "SELECT prompt_id, samples, passes FROM episodes WHERE run_id = ?", (run_id,)
        ):
            pool.add(PassCounts(passes, samples - passes), prompt)
    counts = pool.counts()
    return {"candidates_checked": counts.samples,
            "pass_rate": round(counts.passes / counts.samples, 3) if counts.samples else None,
            "fitted_prior_strength": pool.strength(fallback=float("nan"))}


def grade_instructions(db: Path, run_id: str) -> dict:
    """The run's accepted pairs checked against their prompts' instructions: clean when the chosen answer follows
    every one strictly and the rejected one does not (if-verifiable's checkers, tools/instruction_checks.py)."""
    import sqlite3

    from tools.instruction_checks import check_instructions

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT pp.chosen, pp.rejected, pr.meta, pr.messages FROM preference_pairs pp "
            "JOIN prompts pr ON pr.id = pp.prompt_id WHERE pp.run_id = ? AND pp.accepted",
            (run_id,),
        ).fetchall()

    def follows(text: str, meta: dict, prompt: str) -> bool:
        return all(r["strict"] for r in check_instructions(text, meta["instruction_id_list"], meta["kwargs"], prompt))

    clean = 0
    for chosen, rejected, meta, messages in rows:
        meta, prompt = json.loads(meta), json.loads(messages)[-1]["content"]
        clean += follows(chosen, meta, prompt) and not follows(rejected, meta, prompt)
    return {"accepted": len(rows), "correct_over_wrong": clean}


def peer_python() -> Path:
    """The peer venv's interpreter, building the venv first if it is not there (pip, a few minutes)."""
    python = PEER_VENV / "bin" / "python"
    stamp = PEER_VENV / ".built"
    if not stamp.exists():
        print(f"building the distilabel peer's venv in {PEER_VENV} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        for packages in PEER_PACKAGES:  # torch first: the CPU build present, nothing pulls a CUDA one
            subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
        stamp.write_text(json.dumps(PEER_PACKAGES))
    return python


def run_peer(n: int, folder: Path, source: str = "arithmetic", seed: int = 0) -> dict:
    from agents.catalog import prepare
    from configs.schema import PromptSourceConfig
    from pipelines.prompt_sources import BUILTIN_SETS

    rows = BUILTIN_SETS[source](PromptSourceConfig(builtin=source, limit=n, seed=seed))
    problems = [{"prompt": p["prompt"], "answer": p["answer"]} for p in rows]
    problems_file = folder / "problems.json"
    problems_file.write_text(json.dumps(problems))
    model = prepare("smollm2-135m-instruct")
    done = subprocess.run(
        [str(peer_python()), str(REPO / "benchmarks" / "distilabel_peer.py"), str(model), str(problems_file)],
        capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"),
    )
    if done.returncode != 0:
        raise SystemExit(f"the distilabel peer failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    valid = [p for p in figures.pop("pairs") if p["chosen_rating"] != p["rejected_rating"]
             and None not in (p["chosen_rating"], p["rejected_rating"])]
    clean = sum(correct(p["chosen"], p["answer"]) and not correct(p["rejected"], p["answer"]) for p in valid)
    # every valid pair counts as the peer's "verified" pair: it has no check of its own to tell them apart
    return figures | {"verified": len(valid), "accepted": len(valid), "correct_over_wrong": clean}


def figures(r: dict) -> dict:
    minutes = r["seconds"] / 60
    return r | {
        "seconds": round(r["seconds"], 1),
        "share_clean": round(r["correct_over_wrong"] / r["accepted"], 3) if r["accepted"] else None,
        "verified_per_1k_tokens": round(1000 * r["verified"] / r["target_tokens"], 3) if r["target_tokens"] else 0.0,
        "verified_per_min": round(r["verified"] / minutes, 2),
        "pairs_per_min": round(r["accepted"] / minutes, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="arithmetic problems (the first n of the set)")
    parser.add_argument("--one-step", type=int, default=0,
                        help="one-step arithmetic problems (the quickstart's set, first n); 0 leaves them out")
    parser.add_argument("--instructions", type=int, default=0,
                        help="instruction prompts (the first n of the built-in set); 0 leaves them out")
    parser.add_argument("--seed", type=int, default=0,
                        help="which problems each set draws (its `seed`); 0 is the recorded benchmark's")
    parser.add_argument("--only", action="append", help="run only the configurations whose label has this text")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override added to every after configuration (e.g. game.candidates=2)")
    parser.add_argument("--no-peer", action="store_true", help="leave the distilabel peer out")
    parser.add_argument("--peer-on", action="append", choices=["arithmetic", "arithmetic_one_step"],
                        help="the problem sets the peer plays (default: arithmetic)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="prefsmith-yield-"))
    results = {}
    for i, (label, (preset, source, overrides)) in enumerate(RUNS.items()):
        n = {"instructions": args.instructions, "arithmetic_one_step": args.one_step}.get(source, args.n)
        if n <= 0 or (args.only and not any(text in label for text in args.only)):
            continue
        overrides = [*overrides, *args.set] if label.startswith("after") else overrides
        results[label] = figures(play(preset, source, n, overrides, folder / f"run{i}.db", f"yield-{i}", args.seed))
        print(f"{label}: {json.dumps(results[label])}", flush=True)
    for source in [] if args.no_peer else args.peer_on or ["arithmetic"]:
        n = args.one_step if source == "arithmetic_one_step" else args.n
        if n <= 0:
            continue
        label = f"distilabel 1.5.3 on {FAMILY[source]}: TextGeneration x4, UltraFeedback, DPO format"
        results[label] = figures(run_peer(n, folder, source, args.seed))
        print(f"{label}: {json.dumps(results[label])}", flush=True)
    print(f"\n{'configuration':<80}{'verified':>9}{'tokens':>8}{'per 1k tok':>11}{'per min':>8}{'clean':>7}"
          f"{'seconds':>9}")
    for label, r in results.items():
        clean = "-" if r["share_clean"] is None else f"{r['share_clean']:.2f}"
        print(f"{label:<80}{r['verified']:>9}{r['target_tokens']:>8}{r['verified_per_1k_tokens']:>11}"
              f"{r['verified_per_min']:>8}{clean:>7}{r['seconds']:>9}")
    labels = list(results)
    for family in FAMILY.values():
        before = next((results[k] for k in labels if k.startswith(f"before: {family}")), None)
        peer = next((results[k] for k in labels if k.startswith(f"distilabel 1.5.3 on {family}:")), None)
        for label in labels:
            if not label.startswith("after") or label.split(": ", 1)[1].split(",")[0] != family:
                continue
            after, name = results[label], label.split(":")[0]
            if before and before["verified_per_1k_tokens"]:
                print(f"{family}: verified pairs per 1,000 target tokens, {name} / before: "
                      f"{after['verified_per_1k_tokens'] / before['verified_per_1k_tokens']:.2f}; per minute: "
                      f"{after['verified_per_min'] / before['verified_per_min']:.2f}")
            if peer and peer["verified"]:
                ratio = (after["verified"] / after["seconds"]) / (peer["verified"] / peer["seconds"])
                print(f"{family}: verified pairs per minute, {name} / distilabel's valid pairs per minute: "
                      f"{ratio:.2f}")
    print(json.dumps({"n": args.n, "one_step": args.one_step, "instructions": args.instructions, "results": results}))


if __name__ == "__main__":
    main()
