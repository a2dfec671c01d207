"""setup generation: a token every change of the clinic's set-up replaces, by trigger

Booking keeps the set-up (locations, rooms, treatments, therapists, their weeks of hours,
closures) in memory per process (``services.booking.setup_cache``). Several replicas share
one database, so a process must notice a change made by another at once: each booking
reads this one-row table in its own transaction and reloads when the token moved.

Triggers, not the application, replace the token: any writer (another replica, an older
release, a hand-made fix in psql) moves it, in the same transaction as the change. The
token is random, not a counter: a change that rolls back leaves the token as it was, and
a value read inside that transaction can never come back.

SQLite: ``batch_alter_table`` on one of these tables rebuilds it and loses its triggers; a
later migration doing that must create them again (``setup_cache`` checks at start and
caches nothing while any is missing).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 05:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: The set-up tables whose every change replaces the token (``setup_cache.WATCHED``).
WATCHED = (
    "locations",
    "rooms",
    "treatments",
    "therapists",
    "working_hours",
    "working_weeks",
    "closures",
)

SQLITE_TOKEN = "lower(hex(randomblob(16)))"


def upgrade() -> None:
    op.create_table(
        "setup_generation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_setup_generation")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("INSERT INTO setup_generation (id, token) VALUES (1, md5(random()::text))")
        op.execute(
            """
            CREATE FUNCTION booking_setup_changed() RETURNS trigger AS $$
            BEGIN
                UPDATE setup_generation
                   SET token = md5(random()::text || clock_timestamp()::text)
                 WHERE id = 1;
                RETURN NULL;
            END
            $$ LANGUAGE plpgsql
            """
        )
        for table in WATCHED:
            op.execute(
                f"CREATE TRIGGER {table}_setup_changed AFTER INSERT OR UPDATE OR DELETE "
                f"OR TRUNCATE ON {table} FOR EACH STATEMENT "
                "EXECUTE FUNCTION booking_setup_changed()"
            )
        return
    op.execute(f"INSERT INTO setup_generation (id, token) VALUES (1, {SQLITE_TOKEN})")
    for table in WATCHED:
        for event in ("INSERT", "UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_setup_{event.lower()} AFTER {event} ON {table} "
                f"BEGIN UPDATE setup_generation SET token = {SQLITE_TOKEN} WHERE id = 1; END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in WATCHED:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_setup_changed ON {table}")
        op.execute("DROP FUNCTION IF EXISTS booking_setup_changed()")
    else:
        for table in WATCHED:
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_setup_{event}")
    op.drop_table("setup_generation")
