"""waitlist: entries, freed slots and their offers; clients get a language

Plain tables and a column with a server default (existing clients read English), so the
same script runs on SQLite and PostgreSQL.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 02:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.add_column(
            sa.Column("language", sa.String(length=35), server_default="en", nullable=False)
        )
    op.create_table(
        "waitlist_entries",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("client_id", sa.String(length=36), nullable=False),
        sa.Column("treatment_id", sa.String(length=36), nullable=False),
        sa.Column("location_id", sa.String(length=36), nullable=False),
        sa.Column("therapist_id", sa.String(length=36), nullable=True),
        sa.Column("earliest", sa.Date(), nullable=False),
        sa.Column("latest", sa.Date(), nullable=False),
        sa.Column("times_of_day", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["client_id"], ["clients.id"], name=op.f("fk_waitlist_entries_client_id_clients")
        ),
        sa.ForeignKeyConstraint(
            ["location_id"],
            ["locations.id"],
            name=op.f("fk_waitlist_entries_location_id_locations"),
        ),
        sa.ForeignKeyConstraint(
            ["therapist_id"],
            ["therapists.id"],
            name=op.f("fk_waitlist_entries_therapist_id_therapists"),
        ),
        sa.ForeignKeyConstraint(
            ["treatment_id"],
            ["treatments.id"],
            name=op.f("fk_waitlist_entries_treatment_id_treatments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waitlist_entries")),
    )
    op.create_index(
        "ix_waitlist_entries_match",
        "waitlist_entries",
        ["location_id", "treatment_id", "status", "created_at"],
    )
    op.create_table(
        "waitlist_slots",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("location_id", sa.String(length=36), nullable=False),
        sa.Column("treatment_id", sa.String(length=36), nullable=False),
        sa.Column("therapist_id", sa.String(length=36), nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("freed_by", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["location_id"], ["locations.id"], name=op.f("fk_waitlist_slots_location_id_locations")
        ),
        sa.ForeignKeyConstraint(
            ["therapist_id"],
            ["therapists.id"],
            name=op.f("fk_waitlist_slots_therapist_id_therapists"),
        ),
        sa.ForeignKeyConstraint(
            ["treatment_id"],
            ["treatments.id"],
            name=op.f("fk_waitlist_slots_treatment_id_treatments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waitlist_slots")),
    )
    op.create_table(
        "waitlist_offers",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("slot_id", sa.String(length=36), nullable=False),
        sa.Column("entry_id", sa.String(length=36), nullable=False),
        sa.Column("client_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("offered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["waitlist_entries.id"],
            name=op.f("fk_waitlist_offers_entry_id_waitlist_entries"),
        ),
        sa.ForeignKeyConstraint(
            ["slot_id"], ["waitlist_slots.id"], name=op.f("fk_waitlist_offers_slot_id_waitlist_slots")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waitlist_offers")),
        sa.UniqueConstraint("slot_id", "client_id", name="uq_waitlist_offers_slot_client"),
    )
    op.create_index("ix_waitlist_offers_entry_id", "waitlist_offers", ["entry_id"])
    op.create_index(
        "ix_waitlist_offers_status_expires", "waitlist_offers", ["status", "expires_at"]
    )
    op.create_index(
        "ix_waitlist_offers_client_status", "waitlist_offers", ["client_id", "status"]
    )


def downgrade() -> None:
    op.drop_index("ix_waitlist_offers_client_status", table_name="waitlist_offers")
    op.drop_index("ix_waitlist_offers_status_expires", table_name="waitlist_offers")
    op.drop_index("ix_waitlist_offers_entry_id", table_name="waitlist_offers")
    op.drop_table("waitlist_offers")
    op.drop_table("waitlist_slots")
    op.drop_index("ix_waitlist_entries_match", table_name="waitlist_entries")
    op.drop_table("waitlist_entries")
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("language")
