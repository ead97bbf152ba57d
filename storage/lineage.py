"""Checkpoints by name with their lineage, and the finished stages of `prefsmith iterate`.

A checkpoint's name is a slug (it names its folder); its lineage is the chain of `parent` names back to the
model the first one was trained from.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from configs.errors import ConfigError, NotFoundError
from storage.folders import check_slug
from storage.models import Checkpoint, IterationStage


def register_checkpoint(
    session: Session,
    name: str,
    path: str,
    *,
    base_model: str,
    trainer: str,
    config_hash: str,
    export_id: str | None = None,
    iteration: str | None = None,
    round_index: int | None = None,
) -> dict[str, Any]:
    """Register a trained model; `base_model` naming a registered checkpoint makes it this one's parent.
    Registering a name again with the same path and lineage is a no-op (a rerun); with another, an error."""
    check_slug(name, "checkpoint name")
    parent = base_model if session.get(Checkpoint, base_model) is not None else None
    values = {
        "path": path,
        "base_model": base_model,
        "parent": parent,
        "export_id": export_id,
        "trainer": trainer,
        "config_hash": config_hash,
        "iteration": iteration,
        "round": round_index,
    }
    existing = session.get(Checkpoint, name)
    if existing is not None:
        differs = [key for key, value in values.items() if getattr(existing, key) != value]
        if differs:
            raise ConfigError(
                f"a checkpoint named {name!r} is already registered with another {differs[0]} "
                f"({getattr(existing, differs[0])!r}); choose another name"
            )
        return checkpoint_dict(existing)
    checkpoint = Checkpoint(name=name, eval={}, **values)
    session.add(checkpoint)
    session.flush()
    return checkpoint_dict(checkpoint)


def set_checkpoint_eval(session: Session, name: str, results: dict[str, Any]) -> None:
    checkpoint = get_checkpoint(session, name)
    checkpoint.eval = {**(checkpoint.eval or {}), **results}


def get_checkpoint(session: Session, name: str) -> Checkpoint:
    found = session.get(Checkpoint, name)
    if found is None:
        raise NotFoundError(f"no checkpoint named {name!r} in this database (see `prefsmith models list`)")
    return found


def checkpoint_dict(checkpoint: Checkpoint) -> dict[str, Any]:
    return {c.key: getattr(checkpoint, c.key) for c in Checkpoint.__table__.columns}


def lineage(session: Session, name: str) -> list[dict[str, Any]]:
    """The checkpoint and its ancestors, newest first; the last one's `base_model` is where training began."""
    chain: list[dict[str, Any]] = []
    current: str | None = name
    while current is not None and len(chain) < 1000:
        checkpoint = get_checkpoint(session, current)
        chain.append(checkpoint_dict(checkpoint))
        current = checkpoint.parent
    return chain


def list_checkpoints(session: Session) -> list[dict[str, Any]]:
    return [checkpoint_dict(c) for c in session.execute(select(Checkpoint).order_by(Checkpoint.created_at)).scalars()]


def finished_stages(session: Session, iteration: str) -> dict[tuple[int, str], dict[str, Any]]:
    """(round, stage) → what that stage produced, for every finished stage of `iteration`."""
    rows = session.execute(select(IterationStage).where(IterationStage.iteration == iteration)).scalars()
    return {(row.round, row.stage): dict(row.result or {}) for row in rows}


def finish_stage(session: Session, iteration: str, round_index: int, stage: str, result: dict[str, Any]) -> None:
    """Record a stage as finished; recording it again (a rerun that raced) keeps the first record."""
    if session.get(IterationStage, (iteration, round_index, stage)) is None:
        session.add(IterationStage(iteration=iteration, round=round_index, stage=stage, result=result))
        session.flush()
