"""An admin issues API keys: an admin key, or a front desk key bound to locations."""

from __future__ import annotations

from services.booking import db
from services.booking.usecases import Booking, get_or_404
from shared.auth import Role, create_key
from shared.errors import InvalidRequest
from shared.ids import new_id


async def issue_api_key(
    app: Booking, name: str, role: Role, location_ids: list[str]
) -> tuple[str, str]:
    async with app.uow.write() as session:
        for location_id in location_ids:
            await get_or_404(session, db.Location, location_id, "location")
        if role == "front_desk" and not location_ids:
            raise InvalidRequest("location_ids", "a front_desk key needs at least one location_id")
        key_id = new_id()
        key = await create_key(
            session, key_id=key_id, name=name, role=role, location_ids=location_ids
        )
        return key_id, key
