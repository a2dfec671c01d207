"""A PostgreSQL database for one test or benchmark run: an empty ``public`` schema."""

from __future__ import annotations

import psycopg


def plain_url(url: str) -> str:
    """A libpq URL from an SQLAlchemy one (``postgresql+asyncpg://`` and the like)."""
    for driver in ("postgresql+asyncpg://", "postgresql+psycopg://"):
        url = url.replace(driver, "postgresql://")
    return url


def reset_schema(url: str) -> None:
    """Drop and re-create ``public``: every table, type and migration mark goes."""
    with psycopg.connect(plain_url(url), autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
