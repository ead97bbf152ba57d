"""episodes: the target model that played them and the prompt's pass rate under its tools' verdicts (samples and
passes of the episode, of earlier runs' episodes when it was created, and the posterior mean), for stepped
sampling and for retiring prompts (`mastered`, `out_of_reach`).

Episodes stored before this revision get their target model from their run's config and their own samples and
passes from their judgments' verdicts; their priors stay 0.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 22:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTS = ("prior_samples", "prior_passes", "samples", "passes")

runs = sa.table("runs", sa.column("id", sa.String()), sa.column("config", sa.JSON()))
episodes = sa.table(
    "episodes",
    sa.column("id", sa.String()),
    sa.column("run_id", sa.String()),
    sa.column("target_model", sa.String()),
    sa.column("samples", sa.Integer()),
    sa.column("passes", sa.Integer()),
    sa.column("pass_rate", sa.Float()),
)
rounds = sa.table("rounds", sa.column("id", sa.Integer()), sa.column("episode_id", sa.String()))
judgments = sa.table("judgments", sa.column("round_id", sa.Integer()), sa.column("verified", sa.Boolean()))


def _verdicts(passed_only: bool) -> sa.ScalarSelect:
    query = (
        sa.select(sa.func.count())
        .select_from(judgments.join(rounds, rounds.c.id == judgments.c.round_id))
        .where(rounds.c.episode_id == episodes.c.id, judgments.c.verified.is_not(None))
    )
    return (query.where(judgments.c.verified.is_(True)) if passed_only else query).scalar_subquery()


def upgrade() -> None:
    # Plain add_column, not batch mode: a batch rebuilds `episodes` on SQLite and would cascade to its rounds.
    op.add_column("episodes", sa.Column("target_model", sa.String(length=256), nullable=True))
    for name in COUNTS:
        op.add_column("episodes", sa.Column(name, sa.Integer(), nullable=False, server_default="0"))
    op.add_column("episodes", sa.Column("pass_rate", sa.Float(), nullable=True))
    op.create_index("ix_episodes_prompt_target_model", "episodes", ["prompt_id", "target_model"])
    connection = op.get_bind()
    # The config is read in Python: SQLite and PostgreSQL spell JSON paths differently.
    for run_id, config in connection.execute(sa.select(runs.c.id, runs.c.config)).all():
        try:
            model = config["models"][config["roles"]["target"]]["name"]
        except (KeyError, TypeError):
            continue
        connection.execute(sa.update(episodes).where(episodes.c.run_id == run_id).values(target_model=model))
    connection.execute(sa.update(episodes).values(samples=_verdicts(False), passes=_verdicts(True)))
    connection.execute(
        sa.update(episodes)
        .where(episodes.c.samples > 0)
        .values(pass_rate=(episodes.c.passes + 1.0) / (episodes.c.samples + 2.0))
    )


def downgrade() -> None:
    op.drop_index("ix_episodes_prompt_target_model", table_name="episodes")
    for name in ("pass_rate", *reversed(COUNTS), "target_model"):
        op.drop_column("episodes", name)
