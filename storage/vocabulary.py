"""What the game and storage say alike: the words a run, an episode and a round end with (one `StrEnum`
each, from the game to the database to the CLI) and the candidate answer, kept as the target gave it.

Plain values, no SQL: the episode logic imports them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class RunStatus(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"


class EpisodeStatus(StrEnum):
    """`pending` and `running` exist only in storage; the game ends an episode with one of the others."""

    PENDING = "pending"
    RUNNING = "running"
    ACCEPTED = "accepted"
    GAVE_UP = "gave_up"  # every round was played and no pair reached the reward threshold
    FAILED = "failed"  # every round failed, or the episode could not be played at all
    # Retired (game.retire_after): no pair can come out of more samples of this target model.
    MASTERED = "mastered"  # every one of at least N samples passed its tools' checks
    OUT_OF_REACH = "out_of_reach"  # every sample failed them, and the episode's rounds are spent


# Episodes that a rerun does not play again.
EPISODE_FINISHED: tuple[EpisodeStatus, ...] = (
    EpisodeStatus.ACCEPTED,
    EpisodeStatus.GAVE_UP,
    EpisodeStatus.FAILED,
    EpisodeStatus.MASTERED,
    EpisodeStatus.OUT_OF_REACH,
)
# Prompts `refresh` and the next `iterate` round skip for the model that retired them (unless asked).
EPISODE_RETIRED: tuple[EpisodeStatus, ...] = (EpisodeStatus.MASTERED, EpisodeStatus.OUT_OF_REACH)


class RoundOutcome(StrEnum):
    ACCEPTED = "accepted"  # the reward model graded the pair at or above the threshold
    REJECTED = "rejected"  # graded below it: the optimizer rewrites the prompts
    TIE = "tie"  # best and worst could not be told apart, or nothing but a grade supports the best; no pair
    FAILED = "failed"  # a player produced nothing usable


class AcceptedBy(StrEnum):
    """Why a pair was accepted."""

    VERIFIED = "verified"  # the chosen answer passed its tools' checks and the rejected one failed them
    REWARD = "reward"  # the reward model graded the pair at or above the threshold


class ReviewDecision(StrEnum):
    """What a person decided about a pair; `export --reviewed` drops rejected pairs and swaps flipped ones."""

    APPROVED = "approved"
    REJECTED = "rejected"
    FLIPPED = "flipped"  # the rejected answer is the better one


@dataclass(frozen=True)
class Candidate:
    """One answer of the target to the prompt, with the model and sampling that produced it."""

    text: str
    model_id: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
