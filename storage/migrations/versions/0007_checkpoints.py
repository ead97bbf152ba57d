"""checkpoints: trained models by name with their lineage; iteration_stages: the finished stages of
`prefsmith iterate`, so a rerun repeats none.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 15:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("base_model", sa.String(length=512), nullable=False),
        sa.Column("parent", sa.String(length=128), nullable=True),
        sa.Column("export_id", sa.String(length=128), nullable=True),
        sa.Column("trainer", sa.String(length=32), nullable=False),
        sa.Column("config_hash", sa.String(length=64), nullable=False),
        sa.Column("eval", sa.JSON(), nullable=False),
        sa.Column("iteration", sa.String(length=128), nullable=True),
        sa.Column("round", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["export_id"], ["exports.id"], name=op.f("fk_checkpoints_export_id_exports")),
        sa.ForeignKeyConstraint(["parent"], ["checkpoints.name"], name=op.f("fk_checkpoints_parent_checkpoints")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_checkpoints")),
    )
    op.create_table(
        "iteration_stages",
        sa.Column("iteration", sa.String(length=128), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("iteration", "round", "stage", name=op.f("pk_iteration_stages")),
    )


def downgrade() -> None:
    op.drop_table("iteration_stages")
    op.drop_table("checkpoints")
