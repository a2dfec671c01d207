"""plans get the location they are run from: its front desk sees them

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 00:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.add_column(sa.Column("location_id", sa.String(length=36), nullable=True))
        batch.create_index("ix_plans_location_id", ["location_id"])


def downgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.drop_index("ix_plans_location_id")
        batch.drop_column("location_id")
