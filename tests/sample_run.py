"""A small stored run built through the real write API, for storage, export and CLI tests.

Arithmetic prompts with one correct and one wrong candidate per round; some episodes accept at round 0,
some after a rewrite at round 1, one gives up, so every count in a summary is known in advance.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from storage.db import session_scope
from storage.records import (
    EvidenceRecord,
    JudgmentRecord,
    PairRecord,
    PromptRecord,
    PromptVersionRecord,
    RoundRecord,
    add_prompts,
    ensure_episodes,
    ensure_run,
    store_prompt_versions,
    store_round,
)
from storage.vocabulary import Candidate, EpisodeStatus, RoundOutcome

MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class SampleRun:
    run_id: str
    prompts: int
    rounds: int
    pairs: int
    accepted: int
    failed: int


def sample_prompt(i: int) -> PromptRecord:
    a, b = 3 + i, 4 + 2 * i
    return PromptRecord(
        messages=[
            {"role": "system", "content": "Answer with a number."},
            {"role": "user", "content": f"What is {a} + {b}?"},
        ],
        source="test:arithmetic",
        meta={"answer": a + b},
    )


def sample_round(i: int, index: int, reward: float, threshold: float = 8) -> RoundRecord:
    answer = sample_prompt(i).meta["answer"]
    candidates = [
        Candidate(text=f"The answer is {answer}.", model_id=MODEL, finish_reason="stop", completion_tokens=6),
        Candidate(text=f"The answer is {answer + 1}.", model_id=MODEL, finish_reason="stop", completion_tokens=6),
    ]
    return RoundRecord(
        index=index,
        target_prompt_version=index,
        judge_prompt_version=0,
        outcome=RoundOutcome.ACCEPTED if reward >= threshold else RoundOutcome.REJECTED,
        candidates=candidates,
        judgments=[
            JudgmentRecord(0, 9.0, "matches the reference", MODEL, verified=True, raw_output='{"score": 9}'),
            JudgmentRecord(1, 2.0, "off by one", MODEL, verified=False, raw_output='{"score": 2}'),
        ],
        evidence=[
            EvidenceRecord("reference_answer", {"gold": answer}, {"match": True}, generation_index=0, verdict=True),
            EvidenceRecord("reference_answer", {"gold": answer}, {"match": False}, generation_index=1, verdict=False),
        ],
        pair=PairRecord(0, 1, 9.0, 2.0, reward, "clear contrast", reward >= threshold, MODEL, MODEL, MODEL),
    )


def store_sample_run(engine: Engine, run_id: str = "sample", n_prompts: int = 6) -> SampleRun:
    """Episodes 0, 2, 4… accept at round 0; 1, 3… at round 1 after a rewrite; the last one gives up."""
    rounds = pairs = accepted = failed = 0
    with session_scope(engine) as session:
        ensure_run(session, run_id, "f" * 64, {"note": "sample"})
        prompt_ids = add_prompts(session, [sample_prompt(i) for i in range(n_prompts)])
        ensure_episodes(session, run_id, prompt_ids)
        store_prompt_versions(session, run_id, [
            PromptVersionRecord("target", 0, "You are helpful."),
            PromptVersionRecord("target", 1, "You are helpful. Check your arithmetic.", parent_version=0),
            PromptVersionRecord("judge", 0, "Rank the answers."),
        ])
    for i, prompt_id in enumerate(prompt_ids):
        if i == n_prompts - 1:
            plan = [4.0, 5.0]
        elif i % 2 == 0:
            plan = [9.0]
        else:
            plan = [6.0, 8.0]
        for index, reward in enumerate(plan):
            last = index == len(plan) - 1
            final = None if not last else (EpisodeStatus.ACCEPTED if reward >= 8 else EpisodeStatus.FAILED)
            record = sample_round(i, index, reward)
            if final == EpisodeStatus.FAILED:
                record = RoundRecord(**{**record.__dict__, "failure_reason": "gave up after 2 rounds"})
            with session_scope(engine) as session:
                store_round(session, run_id, prompt_id, record, final_status=final)
            rounds += 1
            pairs += 1
            accepted += reward >= 8
        failed += plan[-1] < 8
    return SampleRun(run_id, n_prompts, rounds, pairs, accepted, failed)
