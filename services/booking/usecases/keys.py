"""An admin issues and revokes API keys: admin keys, or front-desk keys bound to locations.

Each change is announced (``booking.apikey.issued`` / ``.revoked``, with the key's hash,
never the key) so reminders and referrals honour the same keys within seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from services.booking import db
from services.booking.usecases import SOURCE, Booking, get_or_404
from shared import events
from shared.auth import Role, api_keys, create_key, hash_key, key_locations, revoke_key
from shared.errors import InvalidRequest, NotFound
from shared.ids import new_id
from shared.outbox import enqueue
from shared.pagination import PageRequest, keyset


async def _announce(session: AsyncSession, event_type: str, data: events.ApiKeyEvent) -> None:
    await enqueue(session, events.make_event(event_type, SOURCE, data, subject=data.id))


async def issue_api_key(
    app: Booking, name: str, role: Role, location_ids: list[str]
) -> tuple[Row[Any], str]:
    """A new key (its row and the key itself, shown this once)."""
    if role == "front_desk" and not location_ids:
        raise InvalidRequest("location_ids", "a front_desk key needs at least one location_id")
    if role == "admin" and location_ids:
        raise InvalidRequest("location_ids", "an admin key reaches every location: give none")
    locations = key_locations(location_ids)
    async with app.uow.write() as session:
        for location_id in locations:
            await get_or_404(session, db.Location, location_id, "location")
        key_id = new_id()
        key = await create_key(session, key_id=key_id, name=name, role=role, location_ids=locations)
        await _announce(
            session,
            events.APIKEY_ISSUED,
            events.ApiKeyEvent(id=key_id, role=role, location_ids=locations, sha256=hash_key(key)),
        )
        row = (await session.execute(select(api_keys).where(api_keys.c.id == key_id))).one()
        return row, key


#: Keys page by when they were issued, then id.
KEY_ORDER = (api_keys.c.created_at, api_keys.c.id)


def key_key(row: Row[Any]) -> tuple[datetime, str]:
    return (row.created_at, row.id)


async def list_api_keys(app: Booking, *, page: PageRequest) -> Sequence[Row[Any]]:
    async with app.uow.read() as session:
        query = select(api_keys).where(api_keys.c.role != "partner")
        query = keyset(query, page, KEY_ORDER, (datetime, str))
        return (await session.execute(query)).all()


async def revoke_api_key(app: Booking, key_id: str) -> None:
    """Revoke at once here; the other services hear of it by the event."""
    async with app.uow.write() as session:
        row = (await session.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        if row is None:
            raise NotFound("API key", key_id)
        if row.revoked_at is not None:
            return
        revoked_at = await revoke_key(session, key_id, app.clock())
        await _announce(
            session,
            events.APIKEY_REVOKED,
            events.ApiKeyEvent(
                id=key_id,
                role=row.role,
                location_ids=list(row.location_ids or []),
                sha256=row.key_hash,
                revoked_at=revoked_at,
            ),
        )
