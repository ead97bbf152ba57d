"""People's reviews of pairs: stored one row per decision (who, when, what, why), the newest in force.

`export --reviewed` reads `reviews_in_force`: rejected pairs are dropped, flipped pairs swapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from configs.errors import NotFoundError, ReviewError
from storage.models import PairReview, PreferencePair
from storage.vocabulary import ReviewDecision

MAX_NOTE_CHARS = 4000
MAX_REVIEWER_CHARS = 128


@dataclass(frozen=True)
class Review:
    pair_id: str
    decision: str
    note: str
    reviewer: str
    created_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _review(row: PairReview) -> Review:
    return Review(row.pair_id, row.decision, row.note, row.reviewer, row.created_at.isoformat(timespec="seconds"))


def add_review(session: Session, pair_id: str, decision: str, note: str = "", reviewer: str = "") -> Review:
    """Record `reviewer`'s `decision` on pair `pair_id`; the pair must exist and the decision be one of
    ReviewDecision. Earlier reviews stay: the newest is in force."""
    try:
        decision = ReviewDecision(decision)
    except ValueError:
        allowed = ", ".join(d.value for d in ReviewDecision)
        raise ReviewError(f"review decision {decision!r} is not one of {allowed}") from None
    reviewer = " ".join(reviewer.split())
    if not reviewer:
        raise ReviewError("a review needs the reviewer's name")
    if len(reviewer) > MAX_REVIEWER_CHARS:
        raise ReviewError(f"reviewer name is longer than {MAX_REVIEWER_CHARS} characters")
    if len(note) > MAX_NOTE_CHARS:
        raise ReviewError(f"review note is longer than {MAX_NOTE_CHARS} characters")
    if "\x00" in note or "\x00" in reviewer:
        raise ReviewError("review note or reviewer contains a NUL character")
    if session.get(PreferencePair, pair_id) is None:
        raise NotFoundError(f"no pair with id {pair_id!r} in this database")
    row = PairReview(pair_id=pair_id, decision=decision.value, note=note, reviewer=reviewer)
    session.add(row)
    session.flush()
    return _review(row)


def reviews_of(session: Session, pair_id: str) -> list[Review]:
    """Every review of a pair, newest first."""
    rows = session.execute(
        select(PairReview)
        .where(PairReview.pair_id == pair_id)
        .order_by(PairReview.created_at.desc(), PairReview.id.desc())
    ).scalars()
    return [_review(r) for r in rows]


def reviews_in_force(
    session: Session, pair_ids: Sequence[str] | None = None, *, run_id: str | None = None
) -> dict[str, Review]:
    """The newest review of each pair (of `pair_ids`, or of run `run_id`'s pairs), by pair id."""
    newest = select(PairReview.pair_id, func.max(PairReview.id).label("id")).group_by(PairReview.pair_id)
    if pair_ids is not None:
        newest = newest.where(PairReview.pair_id.in_(list(pair_ids)))
    if run_id is not None:
        newest = newest.join(PreferencePair, PreferencePair.id == PairReview.pair_id).where(
            PreferencePair.run_id == run_id
        )
    latest = newest.subquery()
    rows = session.execute(select(PairReview).join(latest, latest.c.id == PairReview.id)).scalars()
    return {r.pair_id: _review(r) for r in rows}
