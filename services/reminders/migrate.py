"""Alembic migrations for reminders, run on start (``migrate_on_start``) or by ``migrate``."""

from __future__ import annotations

from pathlib import Path

from shared import migrations

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring reminders's database to ``revision``; safe to run on every start."""
    migrations.upgrade(MIGRATIONS, database_url, revision)
