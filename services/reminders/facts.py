"""Reads several steps share: a stored session as the domain sees it, where a client is
seen, the ledger row of a message key, the rows of many keys at once."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from services.reminders import db, domain

K = TypeVar("K")


def state_of(row: db.Session) -> domain.SessionState:
    return domain.SessionState(
        session_id=row.id,
        version=row.version,
        status=row.status,
        start=row.start_at,
        end=row.end_at,
        timezone=row.location_timezone,
        booked_at=row.booked_at,
        changed_at=row.changed_at,
        rescheduled_at=row.rescheduled_at,
        rescheduled_version=row.rescheduled_version,
        cancelled_at=row.cancelled_at,
        completed_at=row.completed_at,
    )


async def client_location(
    session: AsyncSession, client_id: str
) -> tuple[str | None, str, str, ZoneInfo | None]:
    """The location of the client's next (else latest) session: id, name, phone, zone."""
    row = (
        await session.scalars(
            select(db.Session)
            .where(db.Session.client_id == client_id)
            .order_by(db.Session.start_at.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return None, "", "", None
    return row.location_id, row.location_name, row.location_phone, ZoneInfo(row.location_timezone)


async def message_by_key(session: AsyncSession, key: str) -> db.Message | None:
    return (await session.scalars(select(db.Message).where(db.Message.key == key))).first()


async def rows_by(
    session: AsyncSession, column: InstrumentedAttribute[K], keys: Collection[K]
) -> dict[K, Any]:
    """The rows of ``column``'s table whose ``column`` is one of ``keys``, by that value:
    one ``IN`` for a batch's look-ups (the column is unique)."""
    if not keys:
        return {}
    found = await session.scalars(select(column.class_).where(column.in_(list(keys))))
    return {getattr(row, column.key): row for row in found}
