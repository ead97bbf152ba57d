"""Idempotent writes of what a synthesis run produces: runs, prompts, prompt versions, episodes and rounds.

Every write is keyed by content or by (parent, index), so replaying the same record stores it once; a
round with its candidates, judgments, evidence and pair goes in inside one transaction, through one writer
function per table.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from configs.errors import StorageError
from storage.models import (
    Base,
    Episode,
    Generation,
    Judgment,
    PreferencePair,
    Prompt,
    PromptVersion,
    Round,
    Run,
    ToolEvidence,
    utcnow,
)
from storage.vocabulary import EPISODE_FINISHED, EPISODE_RETIRED, Candidate, EpisodeStatus, RoundOutcome, RunStatus


def sha256_hex(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def prompt_id_for(messages: Sequence[dict[str, Any]]) -> str:
    """sha256 of the canonical JSON of the prompt's messages: the same prompt has the same id everywhere."""
    return sha256_hex(json.dumps(list(messages), sort_keys=True, ensure_ascii=False, separators=(",", ":")))


def episode_id_for(run_id: str, prompt_id: str) -> str:
    return sha256_hex("episode", run_id, prompt_id)


def pair_id_for(episode_id: str, round_index: int) -> str:
    return sha256_hex("pair", episode_id, str(round_index))


def insert_ignore(session: Session, model: type[Base], rows: list[dict[str, Any]], keys: list[str]) -> None:
    """INSERT … ON CONFLICT (keys) DO NOTHING on SQLite and PostgreSQL; a per-row check elsewhere."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
        # The rows as parameters of one statement (executemany), not as literal VALUES: the statement then
        # compiles once per table and is reused from SQLAlchemy's cache, where VALUES would compile per call.
        session.execute(insert(cast(Table, model.__table__)).on_conflict_do_nothing(index_elements=keys), rows)
        return
    for row in rows:
        exists = session.execute(
            select(func.count()).select_from(model).filter_by(**{k: row[k] for k in keys})
        ).scalar_one()
        if not exists:
            session.add(model(**row))
    session.flush()


@dataclass(frozen=True)
class PromptRecord:
    messages: list[dict[str, Any]]
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return prompt_id_for(self.messages)


@dataclass(frozen=True)
class JudgmentRecord:
    generation_index: int
    score: float | None
    rationale: str
    model_id: str
    verified: bool | None = None
    raw_output: str | None = None


@dataclass(frozen=True)
class EvidenceRecord:
    tool: str
    arguments: dict[str, Any]
    result: dict[str, Any]
    generation_index: int | None = None
    verdict: bool | None = None
    error: str | None = None


@dataclass(frozen=True)
class PairRecord:
    chosen_index: int
    rejected_index: int
    chosen_score: float | None
    rejected_score: float | None
    reward_score: float | None
    reward_analysis: str
    accepted: bool
    target_model: str
    judge_model: str
    reward_model: str
    accepted_by: str | None = None


@dataclass(frozen=True)
class EpisodeTally:
    """The episode's own verdict counts after a round, and the pass rate they and its priors estimate."""

    samples: int
    passes: int
    pass_rate: float


@dataclass(frozen=True)
class RoundRecord:
    """Everything one round produced, as storage writes it."""

    index: int
    target_prompt_version: int
    judge_prompt_version: int
    outcome: RoundOutcome
    candidates: list[Candidate] = field(default_factory=list)
    judgments: list[JudgmentRecord] = field(default_factory=list)
    evidence: list[EvidenceRecord] = field(default_factory=list)
    pair: PairRecord | None = None
    failure_reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    tally: EpisodeTally | None = None


def ensure_run(session: Session, run_id: str, config_hash: str, config: dict[str, Any]) -> Run:
    """Create run `run_id`, or return it if it exists with the same config hash (a resume)."""
    run = session.get(Run, run_id)
    if run is None:
        insert_ignore(
            session,
            Run,
            [
                {
                    "id": run_id,
                    "config_hash": config_hash,
                    "config": config,
                    "status": RunStatus.CREATED,
                    "metrics": {},
                    "created_at": utcnow(),
                    "updated_at": utcnow(),
                }
            ],
            ["id"],
        )
        run = session.get(Run, run_id)
        assert run is not None
    if run.config_hash != config_hash:
        raise StorageError(
            f"run {run_id!r} already exists with config hash {run.config_hash[:12]}, not {config_hash[:12]}; "
            "choose another --run-name to play a different config"
        )
    return run


def add_prompts(session: Session, prompts: Sequence[PromptRecord]) -> list[str]:
    """Store prompts (once each, by content); return their ids in order."""
    rows = {
        p.id: {"id": p.id, "messages": p.messages, "source": p.source, "meta": p.meta, "created_at": utcnow()}
        for p in prompts
    }
    insert_ignore(session, Prompt, list(rows.values()), ["id"])
    return [p.id for p in prompts]


def ensure_episodes(
    session: Session,
    run_id: str,
    prompt_ids: Sequence[str],
    target_model: str | None = None,
    *,
    with_prior: bool = True,
) -> list[str]:
    """One pending episode per (run, prompt); existing episodes are left as they are. A new episode played by
    `target_model` starts from the verdicts other runs' episodes of its prompt by that model have stored
    (unless not `with_prior`)."""
    ids = list(dict.fromkeys(prompt_ids))
    priors = prior_verdicts(session, run_id, ids, target_model) if target_model is not None and with_prior else {}
    rows: list[dict[str, Any]] = [
        {
            "id": episode_id_for(run_id, pid),
            "run_id": run_id,
            "prompt_id": pid,
            "status": EpisodeStatus.PENDING,
            "rounds_played": 0,
            "target_model": target_model,
            "prior_samples": priors.get(pid, (0, 0))[0],
            "prior_passes": priors.get(pid, (0, 0))[1],
            "created_at": utcnow(),
        }
        for pid in ids
    ]
    insert_ignore(session, Episode, rows, ["id"])
    return [r["id"] for r in rows]


@dataclass(frozen=True)
class PromptVersionRecord:
    role: str
    version: int
    text: str
    parent_version: int | None = None
    critique: str | None = None


def store_prompt_versions(session: Session, run_id: str, versions: Sequence[PromptVersionRecord]) -> None:
    """Store prompt versions numbered by the caller (the run's prompt book); known versions are kept as is."""
    insert_ignore(
        session,
        PromptVersion,
        [
            {
                "run_id": run_id,
                "role": v.role,
                "version": v.version,
                "text": v.text,
                "parent_version": v.parent_version,
                "critique": v.critique,
                "created_at": utcnow(),
            }
            for v in versions
        ],
        ["run_id", "role", "version"],
    )


def store_round(
    session: Session,
    run_id: str,
    prompt_id: str,
    record: RoundRecord,
    *,
    final_status: EpisodeStatus | None = None,
    reason: str | None = None,
) -> int:
    """Store one round with everything it produced, once; return the round's id.

    Replaying a round already stored changes nothing. `final_status` closes the episode in the same
    transaction, so an episode is never finished without its last round; `reason` says why it ended without
    an accepted pair (default: the round's failure reason, when the episode failed).
    """
    episode_id = episode_id_for(run_id, prompt_id)
    if session.get(Episode, episode_id) is None:
        raise StorageError(f"episode of prompt {prompt_id[:12]} is not part of run {run_id!r}")
    round_id = _insert_round(session, episode_id, record)
    _insert_generations(session, round_id, record.candidates)
    _insert_judgments(session, round_id, record.judgments)
    _insert_evidence(session, round_id, record.evidence)
    if record.pair is not None:
        _insert_pair(session, run_id, prompt_id, episode_id, round_id, record)
    _advance_episode(session, episode_id, record, final_status, reason)
    return round_id


def _insert_round(session: Session, episode_id: str, record: RoundRecord) -> int:
    insert_ignore(
        session,
        Round,
        [
            {
                "episode_id": episode_id,
                "index": record.index,
                "target_prompt_version": record.target_prompt_version,
                "judge_prompt_version": record.judge_prompt_version,
                "outcome": record.outcome,
                "failure_reason": record.failure_reason,
                "details": record.details,
                "created_at": utcnow(),
            }
        ],
        ["episode_id", "index"],
    )
    return session.execute(
        select(Round.id).where(Round.episode_id == episode_id, Round.index == record.index)
    ).scalar_one()


def _insert_generations(session: Session, round_id: int, candidates: Sequence[Candidate]) -> None:
    insert_ignore(
        session,
        Generation,
        [
            {
                "round_id": round_id,
                "index": i,
                "text": c.text,
                "finish_reason": c.finish_reason,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "model_id": c.model_id,
                "sampling": c.sampling,
            }
            for i, c in enumerate(candidates)
        ],
        ["round_id", "index"],
    )


def _insert_judgments(session: Session, round_id: int, judgments: Sequence[JudgmentRecord]) -> None:
    insert_ignore(
        session,
        Judgment,
        [
            {
                "round_id": round_id,
                "generation_index": j.generation_index,
                "score": j.score,
                "rationale": j.rationale,
                "verified": j.verified,
                "raw_output": j.raw_output,
                "model_id": j.model_id,
            }
            for j in judgments
        ],
        ["round_id", "generation_index"],
    )


def _insert_evidence(session: Session, round_id: int, evidence: Sequence[EvidenceRecord]) -> None:
    insert_ignore(
        session,
        ToolEvidence,
        [
            {
                "round_id": round_id,
                "seq": i,
                "generation_index": e.generation_index,
                "tool": e.tool,
                "arguments": e.arguments,
                "result": e.result,
                "verdict": e.verdict,
                "error": e.error,
            }
            for i, e in enumerate(evidence)
        ],
        ["round_id", "seq"],
    )


def _insert_pair(
    session: Session, run_id: str, prompt_id: str, episode_id: str, round_id: int, record: RoundRecord
) -> None:
    p = record.pair
    assert p is not None
    try:
        chosen, rejected = record.candidates[p.chosen_index].text, record.candidates[p.rejected_index].text
    except IndexError:
        raise StorageError(f"pair of round {record.index} names a candidate that does not exist") from None
    insert_ignore(
        session,
        PreferencePair,
        [
            {
                "id": pair_id_for(episode_id, record.index),
                "run_id": run_id,
                "episode_id": episode_id,
                "round_id": round_id,
                "prompt_id": prompt_id,
                "chosen_index": p.chosen_index,
                "rejected_index": p.rejected_index,
                "chosen": chosen,
                "rejected": rejected,
                "chosen_score": p.chosen_score,
                "rejected_score": p.rejected_score,
                "reward_score": p.reward_score,
                "reward_analysis": p.reward_analysis,
                "accepted": p.accepted,
                "accepted_by": p.accepted_by,
                "round_index": record.index,
                "target_prompt_version": record.target_prompt_version,
                "judge_prompt_version": record.judge_prompt_version,
                "target_model": p.target_model,
                "judge_model": p.judge_model,
                "reward_model": p.reward_model,
                "created_at": utcnow(),
            }
        ],
        ["id"],
    )


def _advance_episode(
    session: Session,
    episode_id: str,
    record: RoundRecord,
    final_status: EpisodeStatus | None,
    reason: str | None,
) -> None:
    """Count the episode's stored rounds; close it when `final_status` is given. A finished episode is never
    touched again, so a replayed round cannot reopen it."""
    rounds_played = session.execute(
        select(func.count()).select_from(Round).where(Round.episode_id == episode_id)
    ).scalar_one()
    values: dict[str, Any] = {"rounds_played": rounds_played, "status": EpisodeStatus.RUNNING}
    if record.tally is not None:  # absolute counts, so a replayed round writes the same values
        t = record.tally
        values |= {"samples": t.samples, "passes": t.passes, "pass_rate": t.pass_rate}
    if final_status is not None:
        if final_status not in EPISODE_FINISHED:
            raise ValueError(f"final_status must be one of {', '.join(EPISODE_FINISHED)}, not {final_status!r}")
        if reason is None and final_status == EpisodeStatus.FAILED:
            reason = record.failure_reason
        values |= {"status": final_status, "finished_at": utcnow(), "failure_reason": reason}
    # A plain UPDATE: nothing in the transaction reads the Episode objects it may hold (their existence is
    # all `store_round` checks), so the ORM need not find and refresh them (its default costs more per round
    # than the statement)
    session.execute(
        update(Episode).where(Episode.id == episode_id, Episode.status.not_in(EPISODE_FINISHED)).values(**values),
        execution_options={"synchronize_session": False},
    )


def pending_episodes(session: Session, run_id: str) -> list[tuple[str, int]]:
    """(prompt id, rounds already played) of the run's episodes that have not finished, oldest first."""
    result = session.execute(
        select(Episode.prompt_id, Episode.rounds_played)
        .where(Episode.run_id == run_id, Episode.status.not_in(EPISODE_FINISHED))
        .order_by(Episode.created_at, Episode.id)
    )
    return [(prompt_id, rounds) for prompt_id, rounds in result.all()]


def episode_statuses(session: Session, run_id: str, prompt_ids: list[str]) -> dict[str, str]:
    """The stored status of run `run_id`'s episodes of `prompt_ids` (those it has)."""
    if not prompt_ids:
        return {}
    result = session.execute(
        select(Episode.prompt_id, Episode.status).where(Episode.run_id == run_id, Episode.prompt_id.in_(prompt_ids))
    )
    return {prompt_id: status for prompt_id, status in result.all()}


def run_prompt_ids(session: Session, run_id: str) -> set[str]:
    """Prompts run `run_id` has an episode for (played or not): the run's prompt set so far."""
    return set(session.execute(select(Episode.prompt_id).where(Episode.run_id == run_id)).scalars())


def resume_prompt_versions(session: Session, run_id: str) -> dict[str, dict[str, int]]:
    """For each unfinished episode of the run that has stored rounds: the target and judge prompt versions
    its next round plays with — the rewrites its last round proposed, else the versions that round played."""
    result = session.execute(
        select(Episode.prompt_id, Round.target_prompt_version, Round.judge_prompt_version, Round.details)
        .join(Round, Round.episode_id == Episode.id)
        .where(Episode.run_id == run_id, Episode.status.not_in(EPISODE_FINISHED))
        .order_by(Episode.prompt_id, Round.index)
    )
    resume: dict[str, dict[str, int]] = {}
    for prompt_id, target, judge, details in result.all():  # the last round of each episode wins
        after = (details or {}).get("next_prompt_versions") or {}
        resume[prompt_id] = {"target": int(after.get("target", target)), "judge": int(after.get("judge", judge))}
    return resume


def prior_verdicts(
    session: Session, run_id: str, prompt_ids: Sequence[str], target_model: str
) -> dict[str, tuple[int, int]]:
    """(samples, passes) of `prompt_ids` by `target_model` in the episodes of runs other than `run_id`."""
    if not prompt_ids:
        return {}
    result = session.execute(
        select(Episode.prompt_id, func.sum(Episode.samples), func.sum(Episode.passes))
        .where(Episode.prompt_id.in_(prompt_ids), Episode.target_model == target_model, Episode.run_id != run_id)
        .group_by(Episode.prompt_id)
    )
    return {pid: (int(samples or 0), int(passes or 0)) for pid, samples, passes in result.all()}


def episode_verdicts(session: Session, run_id: str) -> dict[str, tuple[int, int, int, int]]:
    """(prior samples, prior passes, samples, passes) of run `run_id`'s unfinished episodes, by prompt: what a
    resumed episode's stepped sampling and retiring continue from."""
    result = session.execute(
        select(Episode.prompt_id, Episode.prior_samples, Episode.prior_passes, Episode.samples, Episode.passes).where(
            Episode.run_id == run_id, Episode.status.not_in(EPISODE_FINISHED)
        )
    )
    return {pid: (ps, pp, s, p) for pid, ps, pp, s, p in result.all()}


def retired_prompt_ids(session: Session, target_models: Sequence[str]) -> set[str]:
    """Prompts some episode retired (mastered, out_of_reach) when played by one of `target_models`."""
    if not target_models:
        return set()
    result = session.execute(
        select(Episode.prompt_id).where(
            Episode.target_model.in_(list(target_models)), Episode.status.in_(EPISODE_RETIRED)
        )
    )
    return set(result.scalars())


def played_prompt_ids(session: Session, config_hash: str) -> set[str]:
    """Prompts some run with this config hash has finished playing (what a refresh skips)."""
    result = session.execute(
        select(Episode.prompt_id)
        .join(Run, Run.id == Episode.run_id)
        .where(Run.config_hash == config_hash, Episode.status.in_(EPISODE_FINISHED))
    )
    return set(result.scalars())


def load_prompt_versions(session: Session, run_id: str) -> list[PromptVersionRecord]:
    result = session.execute(
        select(PromptVersion).where(PromptVersion.run_id == run_id).order_by(PromptVersion.role, PromptVersion.version)
    )
    return [PromptVersionRecord(v.role, v.version, v.text, v.parent_version, v.critique) for v in result.scalars()]


def fail_episode(session: Session, run_id: str, prompt_id: str, reason: str) -> None:
    """Close an episode that could not be played (an engine that stayed down, a bug): the run goes on."""
    session.execute(
        update(Episode)
        .where(Episode.id == episode_id_for(run_id, prompt_id), Episode.status.not_in(EPISODE_FINISHED))
        .values(status=EpisodeStatus.FAILED, failure_reason=reason, finished_at=utcnow())
    )


def update_run(
    session: Session,
    run_id: str,
    *,
    status: RunStatus | None = None,
    metrics: dict[str, Any] | None = None,
    current_prompt_versions: dict[str, int] | None = None,
) -> None:
    """Set what is given: the run's status, its metrics, the prompt versions it plays new episodes with."""
    values: dict[str, Any] = {"updated_at": utcnow()}
    if status is not None:
        values["status"] = status
    if metrics is not None:
        values["metrics"] = metrics
    for role, version in (current_prompt_versions or {}).items():  # the roles given
        values[f"current_{role}_prompt_version"] = version
    session.execute(update(Run).where(Run.id == run_id).values(**values))


def current_prompt_versions(session: Session, run_id: str) -> dict[str, int]:
    """The prompt versions run `run_id` plays new episodes with, by role."""
    run = session.get(Run, run_id)
    if run is None:
        raise StorageError(f"no run named {run_id!r} in this database")
    return run.current_prompt_versions
