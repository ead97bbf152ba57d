"""runs.current_*_prompt_version columns (out of runs.metrics), and episodes that gave up say `gave_up`.

Before this revision a run's current prompt versions lived in its metrics blob under
`current_prompt_versions`, and an episode that played every round without an accepted pair was stored as
`rejected`, the word the game uses for a round whose pair was graded below the threshold.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 07:10:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = ("target", "judge")
METRICS_KEY = "current_prompt_versions"

runs = sa.table(
    "runs",
    sa.column("id", sa.String()),
    sa.column("metrics", sa.JSON()),
    *(sa.column(f"current_{role}_prompt_version", sa.Integer()) for role in ROLES),
)
episodes = sa.table("episodes", sa.column("status", sa.String()))


def upgrade() -> None:
    # Columns are added and dropped in place, not in batch mode: on SQLite a batch rebuilds `runs`, and
    # dropping the old table would cascade to every episode. SQLite drops a plain column since 3.35.
    for role in ROLES:
        op.add_column(
            "runs", sa.Column(f"current_{role}_prompt_version", sa.Integer(), nullable=False, server_default="0")
        )
    # JSON is edited in Python rather than in SQL: SQLite and PostgreSQL spell JSON functions differently.
    connection = op.get_bind()
    for run_id, metrics in connection.execute(sa.select(runs.c.id, runs.c.metrics)).all():
        if not isinstance(metrics, dict) or METRICS_KEY not in metrics:
            continue
        current: dict[str, Any] = metrics[METRICS_KEY] or {}
        values = {f"current_{role}_prompt_version": int(current.get(role, 0)) for role in ROLES}
        rest = {k: v for k, v in metrics.items() if k != METRICS_KEY}
        connection.execute(sa.update(runs).where(runs.c.id == run_id).values(metrics=rest, **values))
    op.execute(sa.update(episodes).where(episodes.c.status == "rejected").values(status="gave_up"))


def downgrade() -> None:
    op.execute(sa.update(episodes).where(episodes.c.status == "gave_up").values(status="rejected"))
    connection = op.get_bind()
    columns = [runs.c[f"current_{role}_prompt_version"] for role in ROLES]
    for run_id, metrics, *versions in connection.execute(sa.select(runs.c.id, runs.c.metrics, *columns)).all():
        current = dict(zip(ROLES, versions, strict=True))
        connection.execute(
            sa.update(runs).where(runs.c.id == run_id).values(metrics={**(metrics or {}), METRICS_KEY: current})
        )
    for role in ROLES:
        op.drop_column("runs", f"current_{role}_prompt_version")
