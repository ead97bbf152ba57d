"""SQLAlchemy 2.0 models of everything a synthesis run stores, from the run down to tool evidence.

Identities come from content where content defines them (prompts, episodes, pairs), so that replaying
the same record is recognised and stored once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from storage.vocabulary import EpisodeStatus, RunStatus

# Deterministic constraint names keep Alembic migrations identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Run(Base):
    """A synthesis run: one config (by hash) played over a set of prompts; reruns resume it."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    config_hash: Mapped[str] = mapped_column(String(64), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.CREATED)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The prompt versions the run plays new episodes with (see pipelines.episode.PromptBook); a rerun resumes them.
    current_target_prompt_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    current_judge_prompt_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    episodes: Mapped[list[Episode]] = relationship(back_populates="run")
    prompt_versions: Mapped[list[PromptVersion]] = relationship(back_populates="run")

    @property
    def current_prompt_versions(self) -> dict[str, int]:
        return {"target": self.current_target_prompt_version, "judge": self.current_judge_prompt_version}


class Prompt(Base):
    """An input x, identified by sha256 of its canonical content; shared by every run that plays it."""

    __tablename__ = "prompts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    messages: Mapped[list[Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(256), default="")
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PromptVersion(Base):
    """A version of a player's system prompt (target or judge) within a run."""

    __tablename__ = "prompt_versions"
    __table_args__ = (UniqueConstraint("run_id", "role", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    parent_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    critique: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    run: Mapped[Run] = relationship(back_populates="prompt_versions")


class Episode(Base):
    """One prompt played in one run: up to R rounds until a pair is accepted or the episode gives up."""

    __tablename__ = "episodes"
    __table_args__ = (
        UniqueConstraint("run_id", "prompt_id"),
        # a new run's priors and a refresh's retired prompts: the episodes of these prompts by this model
        Index("ix_episodes_prompt_target_model", "prompt_id", "target_model"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=EpisodeStatus.PENDING)
    rounds_played: Mapped[int] = mapped_column(Integer, default=0)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The prompt's pass rate under its tools' verdicts for this target model (pipelines/sampling.py): the
    # verdicts of earlier runs' episodes when this one was created (`prior_*`), this episode's own, and the
    # posterior mean of both. Retired prompts (mastered, out_of_reach) are skipped per target model.
    target_model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    prior_samples: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    prior_passes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    samples: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    passes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    pass_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)

    run: Mapped[Run] = relationship(back_populates="episodes")
    prompt: Mapped[Prompt] = relationship()
    rounds: Mapped[list[Round]] = relationship(back_populates="episode", order_by="Round.index")


class Round(Base):
    """One round of an episode: candidates, judgments with tool evidence, the pair and its reward."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("episode_id", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    episode_id: Mapped[str] = mapped_column(ForeignKey("episodes.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    target_prompt_version: Mapped[int] = mapped_column(Integer)
    judge_prompt_version: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # What the round decided and how, beyond the rows below it: tools chosen, ranking method, the reward
    # model's raw answer, the optimizer's rewrite, raw outputs of players that failed to parse.
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    episode: Mapped[Episode] = relationship(back_populates="rounds")
    generations: Mapped[list[Generation]] = relationship(back_populates="round", order_by="Generation.index")
    judgments: Mapped[list[Judgment]] = relationship(back_populates="round")
    evidence: Mapped[list[ToolEvidence]] = relationship(back_populates="round")
    pair: Mapped[PreferencePair | None] = relationship(back_populates="round")


class Generation(Base):
    """A candidate answer of the target, with the model and sampling that produced it."""

    __tablename__ = "generations"
    __table_args__ = (UniqueConstraint("round_id", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model_id: Mapped[str] = mapped_column(String(256))
    sampling: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    round: Mapped[Round] = relationship(back_populates="generations")


class Judgment(Base):
    """The judge's score and rationale of one candidate; `raw_output` keeps what the model really said."""

    __tablename__ = "judgments"
    __table_args__ = (UniqueConstraint("round_id", "generation_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    generation_index: Mapped[int] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    rationale: Mapped[str] = mapped_column(Text, default="")
    verified: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    raw_output: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_id: Mapped[str] = mapped_column(String(256))

    round: Mapped[Round] = relationship(back_populates="judgments")


class ToolEvidence(Base):
    """What one tool call returned, on the input (generation_index NULL) or on one candidate."""

    __tablename__ = "tool_evidence"
    __table_args__ = (UniqueConstraint("round_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    generation_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tool: Mapped[str] = mapped_column(String(64))
    arguments: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    verdict: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    round: Mapped[Round] = relationship(back_populates="evidence")


class PreferencePair(Base):
    """The (chosen, rejected) pair of a round, graded by the reward model; accepted pairs get exported."""

    __tablename__ = "preference_pairs"
    __table_args__ = (
        Index("ix_preference_pairs_run_accepted", "run_id", "accepted"),
        # The UI lists pairs newest first, a page at a time (keyset on created_at, id), across runs or in one.
        Index("ix_preference_pairs_created", "created_at", "id"),
        Index("ix_preference_pairs_run_created", "run_id", "created_at", "id"),
        Index("ix_preference_pairs_run_accepted_created", "run_id", "accepted", "created_at", "id"),
        Index("ix_preference_pairs_episode", "episode_id"),  # a pair's page reads its episode's other pairs
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    episode_id: Mapped[str] = mapped_column(ForeignKey("episodes.id", ondelete="CASCADE"))
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), unique=True)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"))
    chosen_index: Mapped[int] = mapped_column(Integer)
    rejected_index: Mapped[int] = mapped_column(Integer)
    chosen: Mapped[str] = mapped_column(Text)
    rejected: Mapped[str] = mapped_column(Text)
    chosen_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    rejected_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    reward_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    reward_analysis: Mapped[str] = mapped_column(Text, default="")
    accepted: Mapped[bool] = mapped_column(Boolean, default=False)
    # Why it was accepted (storage.vocabulary.AcceptedBy): "verified" or "reward"; None when not accepted.
    accepted_by: Mapped[str | None] = mapped_column(String(16), nullable=True)
    round_index: Mapped[int] = mapped_column(Integer)
    target_prompt_version: Mapped[int] = mapped_column(Integer)
    judge_prompt_version: Mapped[int] = mapped_column(Integer)
    target_model: Mapped[str] = mapped_column(String(256))
    judge_model: Mapped[str] = mapped_column(String(256))
    reward_model: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    round: Mapped[Round] = relationship(back_populates="pair")


class PairReview(Base):
    """A person's decision on a pair (storage.vocabulary.ReviewDecision), with who made it, when and why.
    Reviews are kept, never overwritten: the newest one of a pair is in force (`export --reviewed`)."""

    __tablename__ = "pair_reviews"
    __table_args__ = (Index("ix_pair_reviews_pair_created", "pair_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pair_id: Mapped[str] = mapped_column(ForeignKey("preference_pairs.id", ondelete="CASCADE"))
    decision: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")
    reviewer: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Export(Base):
    """A versioned preference set written to disk from a run's accepted pairs."""

    __tablename__ = "exports"
    __table_args__ = (UniqueConstraint("run_id", "version"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))
    filters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    num_pairs: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    """A trained model registered by name with its lineage: what it was trained from (a model name, a folder,
    or an earlier checkpoint), on which export, by which trainer and settings, and how it evaluated. A config
    can name it wherever a model is asked for."""

    __tablename__ = "checkpoints"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    base_model: Mapped[str] = mapped_column(String(512))  # the policy it was trained from, as it was named
    parent: Mapped[str | None] = mapped_column(ForeignKey("checkpoints.name"), nullable=True)  # when a checkpoint
    export_id: Mapped[str | None] = mapped_column(ForeignKey("exports.id"), nullable=True)
    trainer: Mapped[str] = mapped_column(String(32))
    config_hash: Mapped[str] = mapped_column(String(64))  # of the training config
    eval: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    iteration: Mapped[str | None] = mapped_column(String(128), nullable=True)
    round: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IterationStage(Base):
    """A finished stage of `prefsmith iterate` (synthesize, export, train, evaluate of one round) with what it
    produced: a rerun continues after the last finished stage and repeats none."""

    __tablename__ = "iteration_stages"

    iteration: Mapped[str] = mapped_column(String(128), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage: Mapped[str] = mapped_column(String(16), primary_key=True)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)


class RunLease(Base):
    """Who plays a run now: one live synthesizer per run. The holder renews `expires_at` while it plays;
    another synthesizer may take the run over once the lease has expired (or its holder is known dead)."""

    __tablename__ = "run_leases"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    lease_id: Mapped[str] = mapped_column(String(32))  # changes with every holder: the fencing token
    holder: Mapped[str] = mapped_column(String(256))  # host, pid and process start, for people and liveness
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
