"""Alembic environment for booking (see shared.migrations)."""

from services.booking.db import Base
from shared.migrations import run_env

run_env(Base.metadata)
