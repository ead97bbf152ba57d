"""Is a verified pair a clean pair? The quickstart's synthesis played twice on the built-in arithmetic problems, side
by side in one run: *before*, the code of commit f271b91 (its quickstart preset and prompts; a final answer read as
"the number after the last '='" by both reference_answer and calculator; no finish check), from a `git worktree`
of that commit; *after*, this tree (strict final answer by math-verify, every arithmetic step checked, a cut-off
answer fails; the retuned quickstart preset and prompts).

    python benchmarks/verdicts_clean.py [--n 8] [--before f271b91] [--in-flight 4]

Every accepted pair of both runs is then graded by one checker, stated here: the chosen answer is *clean* when it
finished (finish reason `stop`), the answer it commits to (tools.answers.committed_answer: an explicit final form,
else its final line's one number) equals the gold answer by math-verify, and every arithmetic statement it writes
holds (tools.calculator.statements_in). This is the definition the *after* judge enforces, so the after run's share
measures that the judge applies it; the before run's share is what the loose checks let through. Printed, never
asserted.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]


def play(n: int, in_flight: int) -> dict:
    """Play `n` built-in arithmetic problems with the quickstart preset of the code on PYTHONPATH, in process (no
    Ray, no database), and return every accepted pair as text, with the time the episodes took."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    torch.set_num_threads(1)
    from agents.game import EpisodePrompt
    from configs import load_config
    from pipelines.episode import play_episode
    from pipelines.game_setup import build_players, game_settings, new_prompt_book, open_backends
    from pipelines.prompt_sources import load_prompts

    preset = load_config("quickstart").prompts[0].builtin  # each tree's own built-in set
    config = load_config("quickstart", [f"prompts=[{{builtin: {preset}, limit: {n}, seed: 0}}]"])
    backends = open_backends(config)
    players = build_players(config, backends)
    book = new_prompt_book()
    prompts = [EpisodePrompt(p.id, p.messages, p.meta) for p in load_prompts(config.prompts)]
    # the episodes' verdicts pooled as the synthesizer pools them, where the tree has it (game.pooled_prior)
    pooled = {}
    if "pool" in inspect.signature(play_episode).parameters:
        from pipelines.sampling import VerdictPool

        pooled = {"pool": VerdictPool()}
    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        episodes = list(pool.map(lambda p: play_episode(p, players, book, game_settings(config), **pooled), prompts))
    seconds = time.perf_counter() - started
    for backend in backends.values():
        backend.close()
    pairs = []
    for episode in episodes:
        accepted = episode.accepted_round
        if accepted is None:
            continue
        chosen, rejected = accepted.candidates[accepted.chosen_index], accepted.candidates[accepted.rejected_index]
        pairs.append({
            "answer": episode.prompt.meta["answer"],
            "accepted_by": str(accepted.accepted_by),
            "chosen": chosen.text,
            "chosen_finish": chosen.finish_reason,
            "rejected": rejected.text,
            "rejected_finish": rejected.finish_reason,
        })
    settings = {
        "candidates": config.game.candidates, "max_rounds": config.game.max_rounds,
        "max_tokens": config.sampling.max_tokens, "temperature": config.sampling.temperature,
        "system": next((m["content"] for m in prompts[0].messages if m["role"] == "system"), None),
    }
    rounds = sum(len(e.rounds) for e in episodes)
    return {"episodes": len(episodes), "rounds": rounds, "seconds": seconds, "pairs": pairs, "settings": settings}


def clean(text: str, finish: str | None, answer: object) -> dict[str, bool]:
    """The benchmark's checker (see the module docstring)."""
    from tools.answers import committed_answer, same_value
    from tools.calculator import statements_in

    committed = committed_answer(text)
    right = committed.answer is not None and same_value(str(answer), committed.answer)
    sound = all(s.holds for s in statements_in(text))
    return {"finished": finish == "stop", "right": right, "sound": sound, "clean": finish == "stop" and right and sound}


def arm(tree: Path, n: int, in_flight: int) -> dict:
    """`play` run by the code in `tree`, in its own process."""
    env = os.environ | {"PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(Path(__file__).resolve()), "--play", "--n", str(n), "--in-flight", str(in_flight)]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the run in {tree} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(run: dict) -> dict:
    verified = [p for p in run["pairs"] if p["accepted_by"] == "verified"]
    graded = [clean(p["chosen"], p["chosen_finish"], p["answer"]) for p in verified]
    minutes = run["seconds"] / 60

    def share(key: str) -> float | None:
        return round(sum(g[key] for g in graded) / len(graded), 3) if graded else None

    return {
        "episodes": run["episodes"],
        "rounds": run["rounds"],
        "accepted_pairs": len(run["pairs"]),
        "verified_pairs": len(verified),
        "share_chosen_finished": share("finished"),
        "share_chosen_right": share("right"),
        "share_chosen_sound": share("sound"),
        "share_clean": share("clean"),
        "clean_verified_pairs": sum(g["clean"] for g in graded),
        "seconds": round(run["seconds"], 1),
        "verified_pairs_per_min": round(len(verified) / minutes, 2),
        "clean_pairs_per_min": round(sum(g["clean"] for g in graded) / minutes, 2),
        "settings": run["settings"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--before", default="f271b91", help="Commit whose code plays the 'before' run.")
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--pairs-out", default=str(REPO / "benchmarks" / "results" / "verdicts_clean.json"),
                        help="Where every accepted pair of both runs is written, with its grade.")
    parser.add_argument("--play", action="store_true", help=argparse.SUPPRESS)  # one arm, in the child process
    args = parser.parse_args()
    if args.play:
        print(json.dumps(play(args.n, args.in_flight)))
        return
    with tempfile.TemporaryDirectory(prefix="prefsmith-before-") as scratch:
        tree = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), args.before],
                       check=True)
        try:
            runs = {"before": arm(tree, args.n, args.in_flight), "after": arm(REPO, args.n, args.in_flight)}
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    results = {label: summary(run) for label, run in runs.items()}
    print(f"{args.n} built-in arithmetic problems (seed 0, train split) of the quickstart preset of each tree")
    for label, r in results.items():
        s = r["settings"]
        print(f"  {label}: {s['candidates']} candidates, {s['max_rounds']} rounds, max_tokens {s['max_tokens']}, "
              f"temperature {s['temperature']}, prompt's system message: {s['system']!r}")
    print(
        f"{'checks':<8}{'rounds':>7}{'accepted':>9}{'verified':>9}{'finished':>9}{'right':>7}{'sound':>7}{'clean':>7}"
        f"{'seconds':>9}{'verified/min':>13}{'clean/min':>10}"
    )

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for label, r in results.items():
        print(
            f"{label:<8}{r['rounds']:>7}{r['accepted_pairs']:>9}{r['verified_pairs']:>9}"
            f"{cell(r['share_chosen_finished']):>9}{cell(r['share_chosen_right']):>7}{cell(r['share_chosen_sound']):>7}"
            f"{cell(r['share_clean']):>7}{r['seconds']:>9}{r['verified_pairs_per_min']:>13}{r['clean_pairs_per_min']:>10}"
        )
    before, after = results["before"], results["after"]
    rate = before["verified_pairs_per_min"]
    ratio = after["verified_pairs_per_min"] / rate if rate else None
    print("finished / right / sound / clean: shares of the verified pairs whose chosen answer is so (checker above)")
    print(f"verified pairs per minute, after / before: {'-' if ratio is None else f'{ratio:.2f}'} "
          f"(target: >= 0.80, with >= 95% of verified pairs clean)")
    settings = {"n": args.n, "before": args.before, "in_flight": args.in_flight}
    graded = {
        label: [p | {"grade": clean(p["chosen"], p["chosen_finish"], p["answer"])} for p in run["pairs"]]
        for label, run in runs.items()
    }
    Path(args.pairs_out).write_text(json.dumps({"settings": settings, "pairs": graded}, indent=1) + "\n")
    print(f"every accepted pair, graded: {os.path.relpath(args.pairs_out, REPO)}")
    print(json.dumps({"settings": settings, "results": results}))


if __name__ == "__main__":
    main()
