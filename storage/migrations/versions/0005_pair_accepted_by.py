"""preference_pairs.accepted_by: why a pair was accepted ("verified" by its tools' checks, or by "reward").

Pairs accepted before this revision were all accepted on the reward model's grade.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

pairs = sa.table("preference_pairs", sa.column("accepted", sa.Boolean()), sa.column("accepted_by", sa.String()))


def upgrade() -> None:
    op.add_column("preference_pairs", sa.Column("accepted_by", sa.String(length=16), nullable=True))
    op.execute(sa.update(pairs).where(pairs.c.accepted.is_(True)).values(accepted_by="reward"))


def downgrade() -> None:
    op.drop_column("preference_pairs", "accepted_by")
