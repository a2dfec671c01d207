"""Alembic environment for reminders (see shared.migrations)."""

from services.reminders.db import Base
from shared.migrations import run_env

run_env(Base.metadata)
