"""Read-side queries for browsing a database page by page (`prefsmith ui`): pairs filtered and paged newest
first by keyset (created_at, id), one pair with everything that made it, a run's prompt versions, failed
episodes and metric series.

Every query is bounded by a page size or by one episode, and walks an index, so pages answer in the same
time with a thousand pairs or a million. Long texts are cut in SQL for lists; a pair's page reads them whole.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from itertools import accumulate
from typing import Any

from sqlalchemy import Select, Text, and_, cast, func, or_, select
from sqlalchemy.orm import Session

from configs.errors import NotFoundError
from storage.models import (
    Episode,
    Export,
    Generation,
    Judgment,
    PreferencePair,
    Prompt,
    PromptVersion,
    Round,
    Run,
    ToolEvidence,
)
from storage.reviews import reviews_in_force, reviews_of
from storage.vocabulary import AcceptedBy, EpisodeStatus

PAIR_STATUSES = ("all", "accepted", "rejected", "verified", "failed")
PREVIEW_CHARS = 160


@dataclass(frozen=True)
class PairFilter:
    """What the pairs list shows: `status` one of PAIR_STATUSES ("failed" lists failed episodes instead of
    pairs), reward score range, text in chosen or rejected, prompt source, an instruction type the prompt
    carries (an IFEval instruction id such as "punctuation:no_comma")."""

    run: str | None = None
    status: str = "all"
    min_score: float | None = None
    max_score: float | None = None
    text: str | None = None
    source: str | None = None
    instruction: str | None = None


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: the (created_at, id) of the last row shown."""

    created_at: datetime
    id: str

    def encode(self) -> str:
        return f"{self.created_at.isoformat()}|{self.id}"

    @classmethod
    def decode(cls, value: str) -> Cursor:
        stamp, sep, ident = value.partition("|")
        if not sep or not ident:
            raise ValueError(f"not a page cursor: {value!r}")
        return cls(datetime.fromisoformat(stamp), ident)


def _before(stamp: Any, ident: Any, cursor: Cursor) -> Any:
    """(stamp, ident) < cursor, written so an index on (run_id, created_at, id) bounds the scan by created_at
    after the run (a row comparison would be a filter there, not an index condition)."""
    return and_(stamp <= cursor.created_at, or_(stamp < cursor.created_at, ident < cursor.id))


def _page(rows: list[dict[str, Any]], limit: int) -> tuple[list[dict[str, Any]], Cursor | None]:
    """The first `limit` of `rows` (fetched with one more, to know whether another page follows) and the cursor
    of the next page, None on the last."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, Cursor(rows[-1]["created_at"], rows[-1]["id"])


def _user_text(messages: list[Any]) -> str:
    users = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1] if users else (messages[-1].get("content", "") if messages else ""))


def _pairs_query(f: PairFilter) -> Select:
    query = select(
        PreferencePair.id,
        PreferencePair.run_id,
        PreferencePair.created_at,
        PreferencePair.accepted,
        PreferencePair.accepted_by,
        PreferencePair.reward_score,
        PreferencePair.chosen_score,
        PreferencePair.rejected_score,
        PreferencePair.round_index,
        func.substr(PreferencePair.chosen, 1, PREVIEW_CHARS).label("chosen"),
        func.substr(PreferencePair.rejected, 1, PREVIEW_CHARS).label("rejected"),
        PreferencePair.prompt_id,
    )
    if f.run:
        query = query.where(PreferencePair.run_id == f.run)
    if f.status == "accepted":
        query = query.where(PreferencePair.accepted.is_(True))
    elif f.status == "rejected":
        query = query.where(PreferencePair.accepted.is_(False))
    elif f.status == "verified":
        query = query.where(PreferencePair.accepted_by == AcceptedBy.VERIFIED)
    if f.min_score is not None:
        query = query.where(PreferencePair.reward_score >= f.min_score)
    if f.max_score is not None:
        query = query.where(PreferencePair.reward_score <= f.max_score)
    if f.text:
        query = query.where(
            or_(
                PreferencePair.chosen.icontains(f.text, autoescape=True),
                PreferencePair.rejected.icontains(f.text, autoescape=True),
            )
        )
    if f.source:
        query = query.where(
            PreferencePair.prompt_id.in_(select(Prompt.id).where(Prompt.source == f.source).scalar_subquery())
        )
    if f.instruction:
        query = query.where(PreferencePair.prompt_id.in_(_prompts_with_instruction(f.instruction)))
    return query


def _prompts_with_instruction(instruction_id: str) -> Any:
    """The ids of prompts whose meta names `instruction_id`: a match on the JSON text, written the same on
    SQLite and PostgreSQL (an id is quoted there as in any JSON)."""
    return (
        select(Prompt.id)
        .where(cast(Prompt.meta, Text).contains(json.dumps(instruction_id), autoescape=True))
        .scalar_subquery()
    )


def instruction_types(session: Session, run: str | None = None, scanned: int = 500) -> list[str]:
    """The instruction ids the prompts of a run (or of the database) carry, for the list's filter, read from at
    most `scanned` prompts so that the page costs the same with any number (a type seen in none of them is
    still a filter, by its id in the query string)."""
    query = select(Prompt.meta)
    if run:
        query = query.where(Prompt.id.in_(select(Episode.prompt_id).where(Episode.run_id == run).scalar_subquery()))
    found: set[str] = set()
    for meta in session.execute(query.limit(scanned)).scalars():
        ids = (meta or {}).get("instruction_id_list")
        if isinstance(ids, list):
            found.update(i for i in ids if isinstance(i, str))
    return sorted(found)


def list_pairs(
    session: Session, f: PairFilter, after: Cursor | None = None, limit: int = 50
) -> tuple[list[dict[str, Any]], Cursor | None]:
    """One page of pairs newest first, and the cursor of the next page (None on the last)."""
    query = _pairs_query(f)
    if after is not None:
        query = query.where(_before(PreferencePair.created_at, PreferencePair.id, after))
    query = query.order_by(PreferencePair.created_at.desc(), PreferencePair.id.desc()).limit(limit + 1)
    rows, cursor = _page([dict(r._mapping) for r in session.execute(query).all()], limit)
    prompts: dict[str, list[Any]] = dict(
        session.execute(select(Prompt.id, Prompt.messages).where(Prompt.id.in_({r["prompt_id"] for r in rows}))).all()
    )
    reviews = reviews_in_force(session, [r["id"] for r in rows]) if rows else {}
    for row in rows:
        row["prompt"] = _user_text(prompts.get(row["prompt_id"], []))[:PREVIEW_CHARS]
        review = reviews.get(row["id"])
        row["review"] = review.decision if review else None
    return rows, cursor


def list_failed_episodes(
    session: Session, run: str | None, after: Cursor | None = None, limit: int = 50
) -> tuple[list[dict[str, Any]], Cursor | None]:
    """One page of failed episodes (newest first) with their prompt and reason."""
    query = (
        select(
            Episode.id,
            Episode.run_id,
            Episode.created_at,
            Episode.rounds_played,
            Episode.failure_reason,
            Prompt.messages,
            Prompt.source,
        )
        .join(Prompt, Prompt.id == Episode.prompt_id)
        .where(Episode.status == EpisodeStatus.FAILED)
    )
    if run:
        query = query.where(Episode.run_id == run)
    if after is not None:
        query = query.where(_before(Episode.created_at, Episode.id, after))
    query = query.order_by(Episode.created_at.desc(), Episode.id.desc()).limit(limit + 1)
    rows = []
    for r in session.execute(query).all():
        row = dict(r._mapping)
        row["prompt"] = _user_text(row.pop("messages"))[:PREVIEW_CHARS]
        rows.append(row)
    return _page(rows, limit)


def prompt_sources(session: Session, run: str | None = None) -> list[str]:
    """The prompt sources a run (or the database) played, for the list's filter."""
    query = select(Prompt.source).distinct().order_by(Prompt.source)
    if run:
        query = query.where(Prompt.id.in_(select(Episode.prompt_id).where(Episode.run_id == run).scalar_subquery()))
    return [s for s in session.execute(query.limit(200)).scalars() if s]


def _candidate_rows(
    session: Session, round_ids: list[int]
) -> tuple[dict[int, list[dict[str, Any]]], dict[int, list[dict[str, Any]]]]:
    """Each round's candidates with the judge's score and rationale and the tool evidence on each; and each
    round's evidence on the input (tool calls about the prompt, not a candidate)."""
    judgments: dict[tuple[int, int], Judgment] = {
        (j.round_id, j.generation_index): j
        for j in session.execute(select(Judgment).where(Judgment.round_id.in_(round_ids))).scalars()
    }
    evidence: dict[tuple[int, int | None], list[dict[str, Any]]] = defaultdict(list)
    for e in session.execute(
        select(ToolEvidence).where(ToolEvidence.round_id.in_(round_ids)).order_by(ToolEvidence.seq)
    ).scalars():
        evidence[(e.round_id, e.generation_index)].append(
            {"tool": e.tool, "arguments": e.arguments, "result": e.result, "verdict": e.verdict, "error": e.error}
        )
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for g in session.execute(
        select(Generation).where(Generation.round_id.in_(round_ids)).order_by(Generation.round_id, Generation.index)
    ).scalars():
        j = judgments.get((g.round_id, g.index))
        out[g.round_id].append(
            {
                "index": g.index,
                "text": g.text,
                "finish_reason": g.finish_reason,
                "completion_tokens": g.completion_tokens,
                "model_id": g.model_id,
                "score": j.score if j else None,
                "rationale": j.rationale if j else "",
                "verified": j.verified if j else None,
                "raw_output": j.raw_output if j else None,
                "evidence": evidence.get((g.round_id, g.index), []),
            }
        )
    return out, {rid: evidence.get((rid, None), []) for rid in round_ids}


def pair_detail(session: Session, pair_id: str) -> dict[str, Any]:
    """A pair with its prompt, every round of its episode (candidates, judge scores and rationales, tool
    evidence, outcome), the prompt versions in force when it was made, and its reviews."""
    pair = _get_pair(session, pair_id)
    prompt = session.get_one(Prompt, pair.prompt_id)  # both exist: foreign keys
    episode = session.get_one(Episode, pair.episode_id)
    rounds = (
        session.execute(select(Round).where(Round.episode_id == pair.episode_id).order_by(Round.index)).scalars().all()
    )
    candidates, input_evidence = _candidate_rows(session, [r.id for r in rounds])
    round_pairs = {
        p.round_id: p
        for p in session.execute(select(PreferencePair).where(PreferencePair.episode_id == pair.episode_id)).scalars()
    }
    versions = {
        (v.role, v.version): v
        for v in session.execute(
            select(PromptVersion).where(
                PromptVersion.run_id == pair.run_id,
                or_(
                    (PromptVersion.role == "target") & (PromptVersion.version == pair.target_prompt_version),
                    (PromptVersion.role == "judge") & (PromptVersion.version == pair.judge_prompt_version),
                ),
            )
        ).scalars()
    }
    return {
        "pair": {c.key: getattr(pair, c.key) for c in PreferencePair.__table__.columns},
        "prompt": {"messages": prompt.messages, "source": prompt.source},
        "instructions": _instruction_verdicts(
            prompt.meta or {}, candidates.get(pair.round_id, []), pair.chosen_index, pair.rejected_index
        ),
        "episode_status": episode.status,
        "rounds": [
            {
                "index": r.index,
                "outcome": r.outcome,
                "failure_reason": r.failure_reason,
                "details": r.details or {},
                "target_prompt_version": r.target_prompt_version,
                "judge_prompt_version": r.judge_prompt_version,
                "candidates": candidates.get(r.id, []),
                "input_evidence": input_evidence.get(r.id, []),
                "pair": (
                    {
                        "chosen_index": round_pairs[r.id].chosen_index,
                        "rejected_index": round_pairs[r.id].rejected_index,
                        "reward_score": round_pairs[r.id].reward_score,
                        "accepted": round_pairs[r.id].accepted,
                        "id": round_pairs[r.id].id,
                    }
                    if r.id in round_pairs
                    else None
                ),
                "is_this_pair": r.id == pair.round_id,
            }
            for r in rounds
        ],
        "prompt_versions": {
            role: (
                {"version": v.version, "text": v.text, "critique": v.critique, "parent_version": v.parent_version}
                if (v := versions.get((role, number)))
                else {"version": number, "text": None}
            )
            for role, number in (("target", pair.target_prompt_version), ("judge", pair.judge_prompt_version))
        },
        "reviews": [r.as_dict() for r in reviews_of(session, pair_id)],
        "next_id": older_pair_id(session, pair),
        "previous_id": _newer_pair_id(session, pair),
    }


def _instruction_verdicts(
    meta: dict[str, Any], candidates: list[dict[str, Any]], chosen: int, rejected: int
) -> list[dict[str, Any]]:
    """Each instruction the prompt carries with its strict and loose verdict on the pair's chosen and rejected
    candidates, as the instruction_checks tool recorded them (None where it has none)."""
    ids = meta.get("instruction_id_list")
    if not isinstance(ids, list):
        return []
    found_kwargs = meta.get("kwargs")
    kwargs: list[Any] = found_kwargs if isinstance(found_kwargs, list) else []

    def results(index: int) -> list[Any]:
        for c in candidates:
            if c["index"] == index:
                for e in c["evidence"]:
                    if e["tool"] == "instruction_checks" and isinstance(e["result"].get("instructions"), list):
                        return list(e["result"]["instructions"])
        return []

    sides = {"chosen": results(chosen), "rejected": results(rejected)}
    rows = []
    for position, instruction_id in enumerate(ids):
        row: dict[str, Any] = {"id": instruction_id, "kwargs": kwargs[position] if position < len(kwargs) else {}}
        for side, found in sides.items():
            entry = found[position] if position < len(found) and isinstance(found[position], dict) else {}
            row[side] = {"strict": entry.get("strict"), "loose": entry.get("loose"), "error": entry.get("error")}
        rows.append(row)
    return rows


def _get_pair(session: Session, pair_id: str) -> PreferencePair:
    pair = session.get(PreferencePair, pair_id)
    if pair is None:
        raise NotFoundError(f"no pair with id {pair_id!r} in this database")
    return pair


def pair_text(session: Session, pair_id: str, side: str) -> str:
    """The whole chosen or rejected text of a pair."""
    if side not in ("chosen", "rejected"):
        raise NotFoundError(f"a pair has no text {side!r} (chosen or rejected)")
    return str(getattr(_get_pair(session, pair_id), side))


def older_pair_id(session: Session, pair: PreferencePair | str) -> str | None:
    """The next pair of the same run in the list's order (older), for reviewing one after another."""
    if isinstance(pair, str):
        pair = _get_pair(session, pair)
    return session.execute(
        select(PreferencePair.id)
        .where(PreferencePair.run_id == pair.run_id)
        .where(_before(PreferencePair.created_at, PreferencePair.id, Cursor(pair.created_at, pair.id)))
        .order_by(PreferencePair.created_at.desc(), PreferencePair.id.desc())
        .limit(1)
    ).scalar()


def _newer_pair_id(session: Session, pair: PreferencePair) -> str | None:
    return session.execute(
        select(PreferencePair.id)
        .where(
            PreferencePair.run_id == pair.run_id,
            PreferencePair.created_at >= pair.created_at,
            or_(PreferencePair.created_at > pair.created_at, PreferencePair.id > pair.id),
        )
        .order_by(PreferencePair.created_at, PreferencePair.id)
        .limit(1)
    ).scalar()


def run_prompt_versions(session: Session, run_id: str) -> list[dict[str, Any]]:
    """Every prompt version of a run in the order they were written, each with the text of the version it
    rewrote."""
    rows = (
        session.execute(
            select(PromptVersion)
            .where(PromptVersion.run_id == run_id)
            .order_by(PromptVersion.created_at, PromptVersion.role, PromptVersion.version)
        )
        .scalars()
        .all()
    )
    texts = {(v.role, v.version): v.text for v in rows}
    return [
        {
            "role": v.role,
            "version": v.version,
            "text": v.text,
            "parent_version": v.parent_version,
            "parent_text": texts.get((v.role, v.parent_version)) if v.parent_version is not None else None,
            "critique": v.critique,
            "created_at": v.created_at,
        }
        for v in rows
    ]


def run_exports(session: Session, run_id: str) -> list[dict[str, Any]]:
    rows = session.execute(select(Export).where(Export.run_id == run_id).order_by(Export.version)).scalars()
    return [
        {
            "id": e.id,
            "version": e.version,
            "path": e.path,
            "format": e.format,
            "num_pairs": e.num_pairs,
            "filters": e.filters,
            "content_hash": e.content_hash,
            "created_at": e.created_at,
        }
        for e in rows
    ]


def _buckets(points: list[tuple[datetime, float]], start: datetime, end: datetime, n: int) -> list[float]:
    span = max((end - start).total_seconds(), 1e-9)
    sums = [0.0] * n
    for stamp, value in points:
        i = min(n - 1, max(0, int((stamp - start).total_seconds() / span * n)))
        sums[i] += value
    return sums


def _aware(stamp: datetime, like: datetime) -> datetime:
    """SQLite hands back naive UTC datetimes: compare like with like."""
    if (stamp.tzinfo is None) == (like.tzinfo is None):
        return stamp
    return stamp.replace(tzinfo=like.tzinfo)


def run_series(session: Session, run_id: str, buckets: int = 40) -> dict[str, Any]:
    """A run's progress over time, in `buckets` equal slices of its lifetime: episodes finished (cumulative),
    accept rate of the pairs made so far, completion tokens per second."""
    run = session.get(Run, run_id)
    if run is None:
        raise NotFoundError(f"no run named {run_id!r} in this database (see `prefsmith runs list`)")
    finished: list[datetime] = [
        t
        for t in session.execute(
            select(Episode.finished_at).where(Episode.run_id == run_id, Episode.finished_at.is_not(None))
        ).scalars()
        if t is not None
    ]
    pairs = session.execute(
        select(PreferencePair.created_at, PreferencePair.accepted).where(PreferencePair.run_id == run_id)
    ).all()
    tokens = session.execute(
        select(Round.created_at, func.coalesce(func.sum(Generation.completion_tokens), 0))
        .join(Episode, Episode.id == Round.episode_id)
        .join(Generation, Generation.round_id == Round.id)
        .where(Episode.run_id == run_id)
        .group_by(Round.id, Round.created_at)
    ).all()
    stamps: list[datetime] = finished + [p[0] for p in pairs] + [t[0] for t in tokens]
    if not stamps:
        return {"seconds": [], "episodes_done": [], "accept_rate": [], "tokens_per_s": []}
    start = min([_aware(run.created_at, stamps[0])] + stamps)
    end = max(stamps)
    done = list(accumulate(_buckets([(t, 1.0) for t in finished], start, end, buckets)))
    made = accumulate(_buckets([(t, 1.0) for t, _ in pairs], start, end, buckets))
    accepted = accumulate(_buckets([(t, 1.0) for t, a in pairs if a], start, end, buckets))
    toks = _buckets([(t, float(n or 0)) for t, n in tokens], start, end, buckets)
    slice_s = max((end - start).total_seconds(), 1e-9) / buckets
    return {
        "seconds": [round((i + 1) * slice_s, 1) for i in range(buckets)],
        "episodes_done": done,
        "accept_rate": [a / m if m else 0.0 for a, m in zip(accepted, made, strict=True)],
        "tokens_per_s": [t / slice_s for t in toks],
    }
