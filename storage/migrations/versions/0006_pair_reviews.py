"""pair_reviews: people's decisions on pairs (approved / rejected / flipped, with a note); indexes for paging
pairs newest first.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pair_reviews",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pair_id", sa.String(length=64), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("reviewer", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["pair_id"],
            ["preference_pairs.id"],
            name=op.f("fk_pair_reviews_pair_id_preference_pairs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pair_reviews")),
    )
    op.create_index("ix_pair_reviews_pair_created", "pair_reviews", ["pair_id", "created_at"])
    op.create_index("ix_preference_pairs_created", "preference_pairs", ["created_at", "id"])
    op.create_index("ix_preference_pairs_run_created", "preference_pairs", ["run_id", "created_at", "id"])
    op.create_index(
        "ix_preference_pairs_run_accepted_created", "preference_pairs", ["run_id", "accepted", "created_at", "id"]
    )
    op.create_index("ix_preference_pairs_episode", "preference_pairs", ["episode_id"])


def downgrade() -> None:
    op.drop_index("ix_preference_pairs_episode", table_name="preference_pairs")
    op.drop_index("ix_preference_pairs_run_accepted_created", table_name="preference_pairs")
    op.drop_index("ix_preference_pairs_run_created", table_name="preference_pairs")
    op.drop_index("ix_preference_pairs_created", table_name="preference_pairs")
    op.drop_index("ix_pair_reviews_pair_created", table_name="pair_reviews")
    op.drop_table("pair_reviews")
