"""open questions per phone, waitlist offers, the client's language, completed sessions

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("language", sa.String(length=35), nullable=True))
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "questions",
        sa.Column("id", sa.String(length=200), primary_key=True),
        sa.Column("phone", sa.String(length=20), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("client_id", sa.String(length=36), nullable=True),
        sa.Column("session_id", sa.String(length=36), nullable=True),
        sa.Column("offer_id", sa.String(length=36), nullable=True),
        sa.Column("asked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closes_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("answer_sid", sa.String(length=64), nullable=True),
    )
    op.create_index("ix_questions_phone_asked", "questions", ["phone", "asked_at"])
    op.create_table(
        "waitlist_offers",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column("entry_id", sa.String(length=36), nullable=False),
        sa.Column("client_id", sa.String(length=36), nullable=False),
        sa.Column("slot_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("slot_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("location_id", sa.String(length=36), nullable=False),
        sa.Column("location_name", sa.String(length=200), nullable=False),
        sa.Column("location_timezone", sa.String(length=64), nullable=False),
        sa.Column("location_phone", sa.String(length=20), nullable=False),
        sa.Column("offered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pending", sa.JSON(), nullable=False),
        sa.Column("change_seq", sa.Integer(), nullable=False),
        sa.Column("plan_pending", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_waitlist_offers_client_id", "waitlist_offers", ["client_id"])
    op.create_index("ix_waitlist_offers_plan_pending", "waitlist_offers", ["plan_pending"])


def downgrade() -> None:
    op.drop_index("ix_waitlist_offers_plan_pending", table_name="waitlist_offers")
    op.drop_index("ix_waitlist_offers_client_id", table_name="waitlist_offers")
    op.drop_table("waitlist_offers")
    op.drop_index("ix_questions_phone_asked", table_name="questions")
    op.drop_table("questions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("completed_at")
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("language")
