"""changing the clinic after set-up: retired rooms, treatments and therapists, working-hours
versions, location closures

Plain columns with server defaults (existing rows stay active, their hours hold "since
always"), so the same script runs on SQLite and PostgreSQL.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 23:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

RETIRABLE = ("rooms", "treatments", "therapists")


def upgrade() -> None:
    for table in RETIRABLE:
        op.add_column(
            table, sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
    op.add_column(
        "working_hours",
        sa.Column("effective_from", sa.Date(), server_default="1970-01-01", nullable=False),
    )
    op.create_table(
        "working_weeks",
        sa.Column("therapist_id", sa.String(length=36), nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["therapist_id"],
            ["therapists.id"],
            name=op.f("fk_working_weeks_therapist_id_therapists"),
        ),
        sa.PrimaryKeyConstraint("therapist_id", "effective_from", name=op.f("pk_working_weeks")),
    )
    op.create_table(
        "closures",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("location_id", sa.String(length=36), nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["location_id"], ["locations.id"], name=op.f("fk_closures_location_id_locations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_closures")),
    )
    op.create_index(
        "ix_closures_location_span", "closures", ["location_id", "start_at", "end_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_closures_location_span", table_name="closures")
    op.drop_table("closures")
    op.drop_table("working_weeks")
    with op.batch_alter_table("working_hours") as batch:
        batch.drop_column("effective_from")
    for table in RETIRABLE:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("active")
