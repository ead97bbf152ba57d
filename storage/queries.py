"""Read-side queries: run summaries for `prefsmith runs`, accepted pairs for export, export lookup.

All return plain data (dataclasses / dicts) so callers never hold ORM objects past a session.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from sqlalchemy import Select, case, func, or_, select
from sqlalchemy.orm import Session, aliased

from configs.errors import NotFoundError
from storage.models import Episode, Export, Generation, Judgment, PreferencePair, Prompt, Round, Run
from storage.reviews import reviews_in_force
from storage.vocabulary import EPISODE_FINISHED, AcceptedBy, EpisodeStatus, ReviewDecision


@dataclass(frozen=True)
class RunSummary:
    id: str
    config_hash: str
    status: str
    created_at: str
    prompts: int
    episodes: int
    episodes_done: int
    rounds: int
    pairs: int
    accepted_pairs: int
    verified_pairs: int  # accepted because the chosen answer passed its tools' checks and the rejected failed
    failures: int
    exports: int
    metrics: dict[str, Any]
    current_prompt_versions: dict[str, int]
    mastered: int = 0  # prompts retired because every sample passed (game.retire_after)
    out_of_reach: int = 0  # prompts retired because every sample failed
    target_tokens: int = 0  # completion tokens of the target's candidates
    verified_per_1k_tokens: float | None = None  # yield: verified pairs per 1,000 target tokens

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _summaries(session: Session, run_ids: list[str] | None = None) -> list[RunSummary]:
    runs_q = select(Run).order_by(Run.created_at)
    if run_ids is not None:
        runs_q = runs_q.where(Run.id.in_(run_ids))
    runs = session.execute(runs_q).scalars().all()
    if not runs:
        return []
    ids = [r.id for r in runs]
    prompts = dict(
        session.execute(
            select(Episode.run_id, func.count(func.distinct(Episode.prompt_id)))
            .where(Episode.run_id.in_(ids))
            .group_by(Episode.run_id)
        ).all()
    )
    by_status: dict[str, dict[str, int]] = {}
    for run_id, status, n in session.execute(
        select(Episode.run_id, Episode.status, func.count())
        .where(Episode.run_id.in_(ids))
        .group_by(Episode.run_id, Episode.status)
    ).all():
        by_status.setdefault(run_id, {})[status] = n
    rounds = dict(
        session.execute(
            select(Episode.run_id, func.count(Round.id))
            .join(Round, Round.episode_id == Episode.id)
            .where(Episode.run_id.in_(ids))
            .group_by(Episode.run_id)
        ).all()
    )
    # (pairs, accepted, verified) by run; PostgreSQL sums come back as Decimal
    pairs: dict[str, tuple[int, int, int]] = {
        row[0]: (row[1], int(row[2]), int(row[3]))
        for row in session.execute(
            select(
                PreferencePair.run_id,
                func.count(),
                func.sum(case((PreferencePair.accepted.is_(True), 1), else_=0)),
                func.sum(case((PreferencePair.accepted_by == AcceptedBy.VERIFIED, 1), else_=0)),
            )
            .where(PreferencePair.run_id.in_(ids))
            .group_by(PreferencePair.run_id)
        ).all()
    }
    exports = dict(
        session.execute(
            select(Export.run_id, func.count()).where(Export.run_id.in_(ids)).group_by(Export.run_id)
        ).all()
    )
    tokens = {
        run_id: int(n or 0)
        for run_id, n in session.execute(
            select(Episode.run_id, func.sum(Generation.completion_tokens))
            .join(Round, Round.episode_id == Episode.id)
            .join(Generation, Generation.round_id == Round.id)
            .where(Episode.run_id.in_(ids))
            .group_by(Episode.run_id)
        ).all()
    }
    return [
        RunSummary(
            id=r.id,
            config_hash=r.config_hash,
            status=r.status,
            created_at=r.created_at.isoformat(),
            prompts=prompts.get(r.id, 0),
            episodes=sum(by_status.get(r.id, {}).values()),
            episodes_done=sum(by_status.get(r.id, {}).get(s, 0) for s in EPISODE_FINISHED),
            rounds=rounds.get(r.id, 0),
            pairs=pairs.get(r.id, (0, 0, 0))[0],
            accepted_pairs=pairs.get(r.id, (0, 0, 0))[1],
            verified_pairs=pairs.get(r.id, (0, 0, 0))[2],
            failures=by_status.get(r.id, {}).get(EpisodeStatus.FAILED, 0),
            exports=exports.get(r.id, 0),
            metrics=dict(r.metrics or {}),
            current_prompt_versions=r.current_prompt_versions,
            mastered=by_status.get(r.id, {}).get(EpisodeStatus.MASTERED, 0),
            out_of_reach=by_status.get(r.id, {}).get(EpisodeStatus.OUT_OF_REACH, 0),
            target_tokens=tokens.get(r.id, 0),
            verified_per_1k_tokens=round(1000 * pairs.get(r.id, (0, 0, 0))[2] / tokens[r.id], 3)
            if tokens.get(r.id)
            else None,
        )
        for r in runs
    ]


def list_runs(session: Session) -> list[RunSummary]:
    return _summaries(session)


def run_summary(session: Session, run_id: str) -> RunSummary:
    found = _summaries(session, [run_id])
    if not found:
        raise NotFoundError(f"no run named {run_id!r} in this database (see `prefsmith runs list`)")
    return found[0]


def get_run(session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFoundError(f"no run named {run_id!r} in this database (see `prefsmith runs list`)")
    return run


SelectT = TypeVar("SelectT", bound=Select)


def _with_verdicts(query: SelectT, chosen_j: Any, rejected_j: Any) -> SelectT:
    """`query` over preference pairs joined with the judgments of their chosen (`chosen_j`) and rejected
    (`rejected_j`) answers, which carry the tools' verdicts (outer joins: a pair may have none)."""
    return query.outerjoin(
        chosen_j,
        (chosen_j.round_id == PreferencePair.round_id) & (chosen_j.generation_index == PreferencePair.chosen_index),
    ).outerjoin(
        rejected_j,
        (rejected_j.round_id == PreferencePair.round_id)
        & (rejected_j.generation_index == PreferencePair.rejected_index),
    )


def accepted_pairs(
    session: Session,
    run_id: str,
    min_score: float | None = None,
    *,
    reviewed: bool = False,
    require_verified: bool = False,
) -> list[dict[str, Any]]:
    """The run's accepted pairs joined with their prompts, ordered by pair id (a stable export order).
    `min_score` keeps pairs the reward model graded at least that high, and verified pairs (which it did not
    grade: their tools' checks accepted them). With `reviewed`, people's reviews in force are applied: a
    rejected pair is dropped, a flipped one swapped (chosen ⇄ rejected with their scores), and each row says
    its review (None where nobody reviewed it). Each row carries the tools' verdict on its chosen and its
    rejected answer (True, False, or None without one), why the backend ended each (`chosen_finish`,
    `rejected_finish`: 'stop', 'length' — cut off at max_tokens — or None), and its prompt's pass rate and
    samples (`pipelines/sampling.py`); `require_verified` keeps only pairs whose chosen answer passed and
    rejected answer failed."""
    chosen_j, rejected_j = aliased(Judgment), aliased(Judgment)
    chosen_g, rejected_g = aliased(Generation), aliased(Generation)
    columns = (
        chosen_j.verified,
        rejected_j.verified,
        chosen_g.finish_reason,
        rejected_g.finish_reason,
        Episode.pass_rate,
        Episode.prior_samples + Episode.samples,
    )
    query = (
        _with_verdicts(
            select(PreferencePair, Prompt.messages, Prompt.meta, *columns)
            .join(Prompt, Prompt.id == PreferencePair.prompt_id)
            .join(Episode, Episode.id == PreferencePair.episode_id),
            chosen_j,
            rejected_j,
        )
        .outerjoin(
            chosen_g,
            (chosen_g.round_id == PreferencePair.round_id) & (chosen_g.index == PreferencePair.chosen_index),
        )
        .outerjoin(
            rejected_g,
            (rejected_g.round_id == PreferencePair.round_id) & (rejected_g.index == PreferencePair.rejected_index),
        )
    )
    query = query.where(PreferencePair.run_id == run_id, PreferencePair.accepted.is_(True)).order_by(
        PreferencePair.id
    )
    if require_verified:
        query = query.where(chosen_j.verified.is_(True), rejected_j.verified.is_(False))
    if min_score is not None:
        query = query.where(
            or_(PreferencePair.reward_score >= min_score, PreferencePair.accepted_by == AcceptedBy.VERIFIED)
        )
    reviews = reviews_in_force(session, run_id=run_id) if reviewed else {}
    rows = []
    for (
        pair,
        messages,
        meta,
        chosen_verified,
        rejected_verified,
        chosen_finish,
        rejected_finish,
        pass_rate,
        samples,
    ) in session.execute(query).all():
        review = reviews.get(pair.id)
        if review is not None and review.decision == ReviewDecision.REJECTED:
            continue
        row = {
            "pair_id": pair.id,
            "prompt_id": pair.prompt_id,
            "episode_id": pair.episode_id,
            "messages": messages,
            "chosen": pair.chosen,
            "rejected": pair.rejected,
            "score": pair.reward_score,
            "chosen_score": pair.chosen_score,
            "rejected_score": pair.rejected_score,
            "reward_analysis": pair.reward_analysis,
            "accepted_by": pair.accepted_by,
            "chosen_verified": chosen_verified,
            "rejected_verified": rejected_verified,
            "chosen_finish": chosen_finish,
            "rejected_finish": rejected_finish,
            "round_index": pair.round_index,
            "target_prompt_version": pair.target_prompt_version,
            "judge_prompt_version": pair.judge_prompt_version,
            "target_model": pair.target_model,
            "judge_model": pair.judge_model,
            "reward_model": pair.reward_model,
            # the prompt's pass-rate estimate for this target model and the verdicted samples it rests on
            "pass_rate": pass_rate,
            "samples": samples,
            # what an occupation prompt is about (pipelines.prompt_sources.occupation_prompts); None otherwise
            "occupation": (meta or {}).get("occupation"),
            "dimension": (meta or {}).get("dimension"),
        }
        if review is not None and review.decision == ReviewDecision.FLIPPED:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
            row["chosen_score"], row["rejected_score"] = row["rejected_score"], row["chosen_score"]
            row["chosen_verified"], row["rejected_verified"] = row["rejected_verified"], row["chosen_verified"]
            row["chosen_finish"], row["rejected_finish"] = row["rejected_finish"], row["chosen_finish"]
        if reviewed:
            row["review"] = review.decision if review is not None else None
        rows.append(row)
    return rows


def run_target_model(session: Session, run_id: str) -> str | None:
    """The model the run's target played with, as its config names it (a checkpoint's name for `iterate`)."""
    config = get_run(session, run_id).config or {}
    try:
        return str(config["models"][config["roles"]["target"]]["name"])
    except (KeyError, TypeError):
        return None


def pair_quality(session: Session, run_id: str) -> dict[str, Any]:
    """How good a run's pairs are by its tools' verdicts, and whether the reward model agreed with them.

    `accepted` / `correct_over_wrong`: accepted pairs, and those whose chosen answer passed its tools' checks
    while the rejected one failed them (`share` of the accepted, None without any). `reward_vs_verdicts`: over
    the pairs the reward model graded whose two answers both have a verdict, how often its decision (accept at or
    above the threshold) matched the verdicts' (accept exactly the correct-over-wrong pairs): `pairs`, `agree`,
    `rate` (None without such pairs: with `game.verdicts_decide` verified pairs are not graded)."""
    chosen_j, rejected_j = aliased(Judgment), aliased(Judgment)
    query = select(PreferencePair.accepted, PreferencePair.reward_score, chosen_j.verified, rejected_j.verified)
    rows = session.execute(_with_verdicts(query, chosen_j, rejected_j).where(PreferencePair.run_id == run_id)).all()
    accepted = [r for r in rows if r[0]]
    correct = sum(1 for r in accepted if r[2] is True and r[3] is False)
    graded = [r for r in rows if r[1] is not None and r[2] is not None and r[3] is not None]
    # A graded pair was accepted exactly when its grade reached the threshold (the episode's rule).
    agree = sum(1 for accepted_, _, c, j in graded if bool(accepted_) == (c is True and j is False))
    return {
        "accepted": len(accepted),
        "correct_over_wrong": correct,
        "share": correct / len(accepted) if accepted else None,
        "reward_vs_verdicts": {
            "pairs": len(graded),
            "agree": agree,
            "rate": agree / len(graded) if graded else None,
        },
    }


def next_export_version(session: Session, run_id: str) -> int:
    latest = session.execute(select(func.max(Export.version)).where(Export.run_id == run_id)).scalar_one()
    return (latest or 0) + 1


def get_export(session: Session, export_id: str) -> Export:
    export = session.get(Export, export_id)
    if export is None:
        raise NotFoundError(f"no export with id {export_id!r} in this database")
    return export
