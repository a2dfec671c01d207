"""Alembic environment for referrals (see shared.migrations)."""

from services.referrals.db import Base
from shared.migrations import run_env

run_env(Base.metadata)
