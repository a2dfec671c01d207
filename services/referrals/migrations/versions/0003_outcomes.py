"""outcomes: check-in pain scores (reminders.outcome.recorded), one per booking session

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 02:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outcomes",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("plan_id", sa.String(length=36), nullable=True),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.id"], name=op.f("fk_outcomes_plan_id_plans")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outcomes")),
        sa.UniqueConstraint("session_id", name=op.f("uq_outcomes_session_id")),
    )
    op.create_index(op.f("ix_outcomes_client_id"), "outcomes", ["client_id"], unique=False)
    op.create_index(op.f("ix_outcomes_plan_id"), "outcomes", ["plan_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_outcomes_plan_id"), table_name="outcomes")
    op.drop_index(op.f("ix_outcomes_client_id"), table_name="outcomes")
    op.drop_table("outcomes")
