"""clients get a home location: its front desk sees them before their first session

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 00:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("home_location_id", sa.String(length=36), nullable=True))
        batch.create_index("ix_clients_home_location_id", ["home_location_id"])


def downgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.drop_index("ix_clients_home_location_id")
        batch.drop_column("home_location_id")
