"""Do the judge's tools change the data? Plays the same generated arithmetic problems with tools and without
(same seeds, same models) and reports the share of accepted pairs whose chosen answer is correct and whose
rejected answer is wrong, checked against the gold answers afterwards.

    python benchmarks/tools_effect.py [--n 50] [--candidates 3] [--rounds 2] [--in-flight 8] [--model NAME]

Not a test: the numbers are whatever the model makes of the problems; they are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("OMP_NUM_THREADS", "1")


def correct(text: str, answer: int) -> bool:
    from tools.reference_answer import ReferenceAnswerTool

    return bool(ReferenceAnswerTool().invoke({"candidate": text, "gold": str(answer)})["verdict"])


def play(args: argparse.Namespace, with_tools: bool, extra: tuple[str, ...] = ()) -> dict:
    """Play `args.n` arithmetic problems in process (no Ray, no database) and check the accepted pairs
    against the gold answers; `extra` overrides more settings."""
    from agents.game import EpisodePrompt
    from configs import load_config
    from pipelines.episode import play_episode
    from pipelines.game_setup import build_players, game_settings, new_prompt_book, open_backends
    from pipelines.prompt_sources import load_prompts

    overrides = [
        f"models.default.name={args.model}",
        f"game.candidates={args.candidates}",
        f"game.max_rounds={args.rounds}",
        f"sampling.max_tokens={args.max_tokens}",
        f"sampling.temperature={args.temperature}",
        "sampling.seed=0",
        # split: all = the problems the recorded figures were measured on (before the held-out split existed)
        f"prompts=[{{builtin: arithmetic, limit: {args.n}, seed: 0, split: all}}]",
        "tools.enabled=[reference_answer, calculator]" if with_tools else "tools.enabled=[]",
        *extra,
    ]
    config = load_config("quickstart", overrides)
    backends = open_backends(config)
    players = build_players(config, backends)
    book = new_prompt_book()
    prompts = [EpisodePrompt(p.id, p.messages, p.meta) for p in load_prompts(config.prompts)]
    started = time.perf_counter()
    with ThreadPoolExecutor(args.in_flight) as pool:
        episodes = list(pool.map(lambda p: play_episode(p, players, book, game_settings(config)), prompts))
    seconds = time.perf_counter() - started
    engine_calls = sum(backend.engine_calls for backend in backends.values())
    for backend in backends.values():
        backend.close()
    accepted = [(e, e.accepted_round) for e in episodes if e.accepted_round is not None]
    right_over_wrong = sum(
        correct(r.candidates[r.chosen_index].text, e.prompt.meta["answer"])
        and not correct(r.candidates[r.rejected_index].text, e.prompt.meta["answer"])
        for e, r in accepted
    )
    wrong_over_right = sum(
        not correct(r.candidates[r.chosen_index].text, e.prompt.meta["answer"])
        and correct(r.candidates[r.rejected_index].text, e.prompt.meta["answer"])
        for e, r in accepted
    )
    rounds = [r for e in episodes for r in e.rounds]
    return {
        "tools": with_tools,
        "episodes": len(episodes),
        "accepted_pairs": len(accepted),
        "chosen_correct_rejected_wrong": right_over_wrong,
        "share_correct_over_wrong": round(right_over_wrong / len(accepted), 3) if accepted else None,
        "chosen_wrong_rejected_correct": wrong_over_right,
        "rounds": len(rounds),
        "ties": sum(r.outcome == "tie" for r in rounds),
        "failed_rounds": sum(r.outcome == "failed" for r in rounds),
        "candidates_correct": round(
            sum(correct(c.text, e.prompt.meta["answer"]) for e in episodes for r in e.rounds for c in r.candidates)
            / max(1, sum(len(r.candidates) for r in rounds)),
            3,
        ),
        "seconds": round(seconds, 1),
        "engine_calls": engine_calls,
        "verified_pairs": sum(r.accepted_by == "verified" for _, r in accepted),
        "pairs_per_min": round(60 * len(accepted) / seconds, 2),
        "correct_over_wrong_per_min": round(60 * right_over_wrong / seconds, 2),
    }


def play_arguments(description: str, n: int, in_flight: int) -> argparse.Namespace:
    """The command line of a benchmark that calls `play` (this one, verdicts_decide.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--n", type=int, default=n)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--in-flight", type=int, default=in_flight)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    return parser.parse_args()


def main() -> None:
    args = play_arguments(__doc__.splitlines()[0], n=50, in_flight=8)
    import torch

    torch.set_num_threads(1)
    results = [play(args, with_tools=True), play(args, with_tools=False)]
    print(
        f"{'judge':<14}{'episodes':>9}{'accepted':>9}{'right>wrong':>12}{'share':>7}{'wrong>right':>12}"
        f"{'ties':>6}{'cand. correct':>14}{'seconds':>9}"
    )
    for r in results:
        label = "with tools" if r["tools"] else "without tools"
        share = "-" if r["share_correct_over_wrong"] is None else f"{r['share_correct_over_wrong']:.2f}"
        print(
            f"{label:<14}{r['episodes']:>9}{r['accepted_pairs']:>9}{r['chosen_correct_rejected_wrong']:>12}"
            f"{share:>7}{r['chosen_wrong_rejected_correct']:>12}{r['ties']:>6}{r['candidates_correct']:>14}"
            f"{r['seconds']:>9}"
        )
    print(json.dumps({"settings": vars(args), "results": results}))


if __name__ == "__main__":
    main()
