"""How far the instruction_checks tool's offline sentence splitter (an untrained Punkt) moves IFEval's verdicts
from those of the official scorer with NLTK's trained English Punkt, which a run cannot download.

    python benchmarks/instruction_sentences.py --punkt-tab DIR [--responses FILE] [--n 400] [--samples 1]
        [--from-db URL]

DIR is NLTK's `tokenizers/punkt_tab/english` folder (what `nltk.download("punkt_tab")` installs). FILE holds
the answers (JSONL: prompt, instruction_id_list, kwargs, response); when it does not exist, the target model of
configs/instructions.yaml writes them for `--n` prompts of the built-in `instructions` set and they are saved
there (`--from-db`: every candidate a database holds for a prompt with instructions, a synthesis run's).
Every answer is checked on its own instructions and on each of IFEval's 25 types (parameters drawn as
the built-in set draws them), strict and loose, both ways; the differences are printed, never asserted.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def write_responses(path: Path, n: int, samples: int) -> None:
    from agents.backends.protocol import ChatMessage, ChatRequest
    from agents.players import default_prompt
    from configs import load_config
    from pipelines.game_setup import open_backends
    from pipelines.prompt_sources import load_prompts

    config = load_config("instructions", [])
    prompts = load_prompts([config.prompts[0].model_copy(update={"limit": n})])
    (backend,) = open_backends(config).values()
    system = ChatMessage(role="system", content=default_prompt("target"))
    started = time.perf_counter()
    try:
        requests = [
            ChatRequest.from_sampling([system, ChatMessage(role="user", content=p.messages[-1]["content"])],
                                      config.sampling, n=samples, seed=i)
            for i, p in enumerate(prompts)
        ]
        results = backend.generate(requests)
    finally:
        backend.close()
    with path.open("w") as out:
        for prompt, result in zip(prompts, results, strict=True):
            for completion in getattr(result, "completions", []):
                out.write(json.dumps({"prompt": prompt.messages[-1]["content"], "response": completion.text}
                                     | {k: prompt.meta[k] for k in ("instruction_id_list", "kwargs")}) + "\n")
    print(f"wrote {path}: {len(prompts)} prompts x {samples} in {time.perf_counter() - started:.0f} s")


def dump_responses(path: Path, url: str) -> None:
    from sqlalchemy import select

    from storage.db import session_scope
    from storage.migrate import open_database
    from storage.models import Episode, Generation, Prompt, Round

    engine = open_database(url)
    with session_scope(engine) as session, path.open("w") as out:
        rows = session.execute(
            select(Generation.text, Prompt.messages, Prompt.meta)
            .join(Round, Round.id == Generation.round_id)
            .join(Episode, Episode.id == Round.episode_id)
            .join(Prompt, Prompt.id == Episode.prompt_id)
        ).all()
        kept = 0
        for text, messages, meta in rows:
            if (meta or {}).get("instruction_id_list"):
                kept += 1
                out.write(json.dumps({"prompt": messages[-1]["content"], "response": text}
                                     | {k: meta[k] for k in ("instruction_id_list", "kwargs")}) + "\n")
    engine.dispose()
    print(f"wrote {path}: {kept} candidates from {url}")


def real_punkt(folder: Path):
    """NLTK's trained Punkt from a punkt_tab folder, read here (nltk opens files only under its data roots)."""
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    def lines(name: str) -> list[str]:
        return [line for line in (folder / name).read_text(encoding="utf-8").splitlines() if line]

    params = PunktParameters()
    params.abbrev_types = set(lines("abbrev_types.txt"))
    params.sent_starters = set(lines("sent_starters.txt"))
    params.collocations = {tuple(line.split("\t")) for line in lines("collocations.tab")}
    for line in lines("ortho_context.tab"):
        word, flags = line.split("\t")
        params.ortho_context[word] = int(flags)
    return PunktSentenceTokenizer(params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--punkt-tab", type=Path, required=True)
    parser.add_argument("--responses", type=Path, default=Path("instruction_responses.jsonl"))
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--from-db", default=None)
    args = parser.parse_args()
    if args.from_db and not args.responses.exists():
        dump_responses(args.responses, args.from_db)
    if not args.responses.exists():
        write_responses(args.responses, args.n, args.samples)

    import nltk
    from if_verifiable.ifeval import instructions_util

    from pipelines.instruction_prompts import INSTRUCTION_TYPES, PARAMETERS
    from tools.instruction_checks import CHECKERS, _OfflineNltk, check_instructions

    CHECKERS.ifeval()
    # The package's two uses of a sentence splitter (sentence counts, word_tokenize), offline and trained.
    offline = (instructions_util._get_sentence_tokenizer, instructions_util.nltk)
    trained = real_punkt(args.punkt_tab)
    official = (lambda: trained, _OfflineNltk(nltk, trained))

    rows = [json.loads(line) for line in args.responses.read_text().splitlines() if line.strip()]
    rng = random.Random(0)
    checks, differ, own_pass, counted_apart = 0, collections.Counter(), 0, 0
    for row in rows:
        counted_apart += len(offline[0]().tokenize(row["response"])) != len(trained.tokenize(row["response"]))
        specs = [(row["instruction_id_list"], row["kwargs"])]
        for kind in INSTRUCTION_TYPES:
            kwargs = PARAMETERS[kind](rng)
            if kind == "combination:repeat_prompt":
                kwargs["prompt_to_repeat"] = row["prompt"].split(". ")[0] + "."
            specs.append(([kind], [kwargs]))
        for position, (ids, kwargs) in enumerate(specs):
            instructions_util._get_sentence_tokenizer, instructions_util.nltk = offline
            ours = check_instructions(row["response"], ids, kwargs, row["prompt"])
            instructions_util._get_sentence_tokenizer, instructions_util.nltk = official
            theirs = check_instructions(row["response"], ids, kwargs, row["prompt"])
            if position == 0:
                own_pass += all(r["strict"] for r in ours)
            for a, b in zip(ours, theirs, strict=True):
                checks += 1
                if (a["strict"], a["loose"]) != (b["strict"], b["loose"]):
                    differ[a["id"]] += 1
    instructions_util._get_sentence_tokenizer, instructions_util.nltk = offline
    print(f"{len(rows)} answers, {checks} checks (strict and loose each): {sum(differ.values())} differ "
          f"({sum(differ.values()) / max(checks, 1):.2%}): {dict(differ) or 'none'}")
    print(f"sentence counts differ on {counted_apart} of {len(rows)} answers")
    print(f"answers following every instruction of their own prompt strictly: {own_pass} of {len(rows)} "
          f"({own_pass / max(len(rows), 1):.1%})")


if __name__ == "__main__":
    main()
