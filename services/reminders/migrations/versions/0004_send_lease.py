"""the send ledger's rows carry who is sending them and until when (the send lease)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 05:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("sending_by", sa.String(length=80), nullable=True))
        batch.add_column(sa.Column("sending_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("sending_until")
        batch.drop_column("sending_by")
