"""Time helpers: every instant inside the system is an aware UTC datetime."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def utcnow() -> datetime:
    """The current instant, aware, in UTC."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """Convert an aware datetime to UTC; a naive one is refused, not guessed."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("datetime must carry a timezone offset, e.g. 2026-03-08T10:00:00Z")
    return moment.astimezone(UTC)


def zone(name: str) -> ZoneInfo:
    """The IANA zone called ``name``; ``ValueError`` names it when it does not exist."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA timezone {name!r}") from exc
