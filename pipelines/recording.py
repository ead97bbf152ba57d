"""Stores an episode's record: every round with its candidates, judgments, tool evidence, pair, reward and
prompt versions, and the episode's final status with its last round. A round is one transaction, or part of
one shared with the rounds other episodes finished at the same moment (`GroupCommit`).

Idempotent: storing the same record twice stores it once (see `storage.records`).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from pipelines.episode import EpisodeRecord, PlayedRound, PromptRef
from storage import records as rows
from storage.db import session_scope
from storage.vocabulary import EpisodeStatus, RoundOutcome


def _version_row(ref: PromptRef) -> rows.PromptVersionRecord:
    return rows.PromptVersionRecord(ref.role, ref.version, ref.text, ref.parent, ref.critique)


def round_row(
    record: PlayedRound, model_ids: dict[str, str], tally: rows.EpisodeTally | None = None
) -> rows.RoundRecord:
    """The storage form of one round; `model_ids` maps roles to the model that played them, `tally` is its
    episode's verdict counts after it."""
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
        "steps": record.steps,
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
        tally=tally,
    )


@dataclass(frozen=True)
class RoundToStore:
    """A played round with what its episode's state asks to be written with it: when the round ended the
    episode, its final status and reason and the rewrites it promoted. Sent as is from an episode worker."""

    prompt_id: str
    record: PlayedRound
    final_status: EpisodeStatus | None = None
    reason: str | None = None
    promoted: tuple[PromptRef, ...] = ()
    tally: rows.EpisodeTally | None = None

    @classmethod
    def of(cls, episode: EpisodeRecord, record: PlayedRound) -> RoundToStore:
        tally = rows.EpisodeTally(episode.own.samples, episode.own.passes, episode.counts.pass_rate)
        if not (episode.finished and record is episode.rounds[-1]):
            return cls(episode.prompt.id, record, tally=tally)
        return cls(episode.prompt.id, record, episode.status, episode.reason, tuple(episode.promoted), tally)


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
    store_rounds(engine, run_id, [RoundToStore.of(episode, record)], model_ids, fence=fence)


def store_rounds(
    engine: Engine,
    run_id: str,
    rounds: Sequence[RoundToStore],
    model_ids: dict[str, str],
    *,
    failed: Sequence[tuple[str, str]] = (),
    fence: Callable[[Session], None] | None = None,
) -> None:
    """Many rounds (in order) and the episodes that `failed` ((prompt id, reason): closed as failed) in one
    transaction, as `store_played_round` writes each: what a scheduler collected from its episode workers."""
    with session_scope(engine) as session:
        if fence is not None:
            fence(session)
        for item in rounds:
            record = item.record
            played = dict.fromkeys([record.target_prompt, record.judge_prompt, *(record.next_prompts or ())])
            rows.store_prompt_versions(session, run_id, [_version_row(ref) for ref in played])
            if item.promoted:
                rows.update_run(
                    session, run_id, current_prompt_versions={ref.role: ref.version for ref in item.promoted}
                )
            rows.store_round(
                session,
                run_id,
                item.prompt_id,
                round_row(record, model_ids, item.tally),
                final_status=item.final_status,
                reason=item.reason,
            )
        for prompt_id, reason in failed:
            rows.fail_episode(session, run_id, prompt_id, reason)


class GroupCommit:
    """Rounds that many episode threads finish at about the same time, written together (group commit).

    `store(item)` returns once `item` is committed, exactly as a write of its own would, or raises what the
    write raised. Meanwhile one writer thread takes everything that arrived while its previous transaction ran
    and writes it with `write` in one transaction (one lease renewal, one commit): episodes stop queueing for
    the database one by one, and a round that finds the writer idle is written at once. A batch that fails with
    an error other than `whole_batch` (the database is down, the lease is lost: every round would fail alike)
    is written again round by round, so a round that cannot be stored fails only its own episode.
    """

    def __init__(
        self,
        write: Callable[[list[RoundToStore]], None],
        whole_batch: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.write, self.whole_batch = write, whole_batch
        self._cond = threading.Condition()
        self._queue: list[tuple[RoundToStore, Future[None]]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="prefsmith-round-writer", daemon=True)
        self._thread.start()

    def store(self, item: RoundToStore) -> None:
        done: Future[None] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the round writer is closed")
            self._queue.append((item, done))
            self._cond.notify()
        done.result()

    @property
    def backlog(self) -> int:
        """Rounds waiting for the writer (not yet in a transaction)."""
        with self._cond:
            return len(self._queue)

    def close(self) -> None:
        """Write what is queued, then stop the writer thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def __enter__(self) -> GroupCommit:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                batch, self._queue = self._queue, []
                if not batch and self._closed:
                    return
            self._write(batch)

    def _write(self, batch: list[tuple[RoundToStore, Future[None]]]) -> None:
        try:
            self.write([item for item, _ in batch])
        except BaseException as exc:
            if len(batch) == 1 or isinstance(exc, self.whole_batch):
                for _, done in batch:
                    done.set_exception(exc)
                return
            for one in batch:  # find the round that cannot be stored; the others are written
                self._write([one])
            return
        for _, done in batch:
            done.set_result(None)


def store_episode(engine: Engine, run_id: str, episode: EpisodeRecord, model_ids: dict[str, str]) -> None:
    """Write every round of a finished `episode` (one transaction each); the last one closes the episode."""
    for record in episode.rounds:
        store_played_round(engine, run_id, episode, record, model_ids)
