"""worker warm-up state

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 18:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        # Workers that registered before warm-ups existed were serving jobs: ready.
        batch_op.add_column(sa.Column("state", sa.String(length=16), server_default="ready", nullable=False))
        batch_op.add_column(sa.Column("warmup", sa.JSON(), server_default=sa.text("'{}'"), nullable=False))
        batch_op.add_column(sa.Column("warming_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("ready_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("ready_at")
        batch_op.drop_column("warming_at")
        batch_op.drop_column("warmup")
        batch_op.drop_column("state")
