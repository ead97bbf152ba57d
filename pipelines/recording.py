"""Stores an episode's record: every round with its candidates, judgments, tool evidence, pair, reward and
prompt versions, one transaction per round, and the episode's final status with its last round.

Idempotent: storing the same record twice stores it once (see `storage.records`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from pipelines.episode import EpisodeRecord, PlayedRound, PromptRef
from storage import records as rows
from storage.db import session_scope
from storage.vocabulary import RoundOutcome


def _version_row(ref: PromptRef) -> rows.PromptVersionRecord:
    return rows.PromptVersionRecord(ref.role, ref.version, ref.text, ref.parent, ref.critique)


def round_row(record: PlayedRound, model_ids: dict[str, str]) -> rows.RoundRecord:
    """The storage form of one round; `model_ids` maps roles to the model that played them."""
    ranking = record.ranking
    judgments = (
        []
        if ranking is None
        else [
            rows.JudgmentRecord(s.index, s.judge_score, s.rationale, model_ids["judge"], s.verified, ranking.raw)
            for s in ranking.scored
        ]
    )
    pair = None
    decided = record.reward is not None or record.accepted_by is not None  # graded, or accepted on verdicts
    if record.chosen_index is not None and record.rejected_index is not None and decided:
        scores = {s.index: s.judge_score for s in ranking.scored} if ranking else {}
        pair = rows.PairRecord(
            chosen_index=record.chosen_index,
            rejected_index=record.rejected_index,
            chosen_score=scores.get(record.chosen_index),
            rejected_score=scores.get(record.rejected_index),
            reward_score=None if record.reward is None else float(record.reward.score),
            reward_analysis="" if record.reward is None else record.reward.analysis,
            accepted=record.outcome == RoundOutcome.ACCEPTED,
            target_model=model_ids["target"],
            judge_model=model_ids["judge"],
            reward_model=model_ids["reward"],
            accepted_by=record.accepted_by,
        )
    details: dict[str, Any] = {
        "seed": record.seed,
        "tools": record.tools,
        "ranking_method": ranking.method if ranking else None,
        "judge_attempts": ranking.attempts if ranking else None,
        "final_scores": [s.final_score for s in ranking.scored] if ranking else None,
        "reward_raw": record.reward_raw,
        "rewrite": record.rewrite.model_dump() if record.rewrite else None,
        # what a resumed episode plays its next round with: the rewrites this round proposed, or the same prompts
        "next_prompt_versions": {ref.role: ref.version for ref in record.prompts_after},
        "failures": [dataclasses.asdict(f) for f in record.failures],
    }
    return rows.RoundRecord(
        index=record.index,
        target_prompt_version=record.target_prompt.version,
        judge_prompt_version=record.judge_prompt.version,
        outcome=record.outcome,
        candidates=list(record.candidates),
        judgments=judgments,
        evidence=[
            rows.EvidenceRecord(
                call.tool,
                call.arguments,
                call.evidence.data | {"summary": call.evidence.summary},
                call.candidate,
                call.evidence.verdict,
                call.evidence.error,
            )
            for call in record.tool_calls
        ],
        pair=pair,
        failure_reason=record.failure_reason,
        details=details,
    )


def store_played_round(
    engine: Engine,
    run_id: str,
    episode: EpisodeRecord,
    record: PlayedRound,
    model_ids: dict[str, str],
    *,
    fence: Callable[[Session], None] | None = None,
) -> None:
    """One transaction: the round, the prompt versions it played with and those it proposed, and — when the
    round ended the episode — the episode's final status and reason, and the rewrites it promoted as the
    run's current prompts. `fence(session)` runs first and may refuse the write (a synthesizer whose run
    lease was taken over)."""
    closes = episode.finished and record is episode.rounds[-1]
    with session_scope(engine) as session:
        if fence is not None:
            fence(session)
        played = dict.fromkeys([record.target_prompt, record.judge_prompt, *(record.next_prompts or ())])
        rows.store_prompt_versions(session, run_id, [_version_row(ref) for ref in played])
        if closes and episode.promoted:
            rows.update_run(
                session, run_id, current_prompt_versions={ref.role: ref.version for ref in episode.promoted}
            )
        rows.store_round(
            session,
            run_id,
            episode.prompt.id,
            round_row(record, model_ids),
            final_status=episode.status if closes else None,
            reason=episode.reason if closes else None,
        )


def store_episode(engine: Engine, run_id: str, episode: EpisodeRecord, model_ids: dict[str, str]) -> None:
    """Write every round of a finished `episode` (one transaction each); the last one closes the episode."""
    for record in episode.rounds:
        store_played_round(engine, run_id, episode, record, model_ids)
