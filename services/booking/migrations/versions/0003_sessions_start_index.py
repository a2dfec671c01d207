"""index sessions by start: availability reads one time range across all therapists

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 00:05:00
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_sessions_start_at", "sessions", ["start_at", "blocked_until"])


def downgrade() -> None:
    op.drop_index("ix_sessions_start_at", table_name="sessions")
