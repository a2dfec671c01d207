"""Each service's Alembic history builds exactly the tables its code uses (no drift)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from alembic import command

from shared.migrations import alembic_config

SERVICES = ["booking", "reminders", "referrals"]


@pytest.mark.parametrize("service", SERVICES)
def test_migrations_match_the_models(service: str, tmp_path: Path) -> None:
    migrate = importlib.import_module(f"services.{service}.migrate")
    url = f"sqlite:///{tmp_path / service}.db"
    migrate.upgrade(url)
    # Raises when autogenerate would write a new migration: a model changed without one.
    command.check(alembic_config(migrate.MIGRATIONS, url))
