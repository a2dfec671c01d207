"""An admin changes the clinic after set-up: renames, a new phone or policy, a retired room,
treatment or therapist. Locations (with their rooms) and therapists are announced with
``booking.location.updated`` / ``booking.therapist.updated``, so reminders texts use the
newest name and phone.

Nothing here moves or cancels a booked session. Retiring a room, a treatment or a
therapist only stops new offers (``queries.staff_calendars`` and the booking check skip
them); its booked sessions stay, and stay in the feeds.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from services.booking import db, domain, hours
from services.booking.change_schemas import LocationPatch, RoomPatch, ServicePatch, TherapistPatch
from services.booking.usecases import SOURCE, Booking, get_or_404
from shared import events
from shared.errors import InvalidRequest, NotFound
from shared.outbox import enqueue
from shared.phones import normalize_phone

# ---------------------------------------------------------------------------------------
# What the events carry: the resource as the API shows it, without its ICS token


def location_event(row: db.Location) -> events.LocationEvent:
    return events.LocationEvent(
        id=row.id,
        name=row.name,
        timezone=row.timezone,
        address=row.address,
        phone=row.phone,
        min_notice_minutes=row.min_notice_minutes,
        horizon_days=row.horizon_days,
        late_cancel_hours=row.late_cancel_hours,
        slot_step_minutes=row.slot_step_minutes,
        rooms=[
            events.RoomDetails(id=r.id, location_id=r.location_id, name=r.name, active=r.active)
            for r in row.rooms
        ],
    )


def therapist_event(row: db.Therapist, today: date) -> events.TherapistEvent:
    """The therapist with the week in force on ``today``."""
    return events.TherapistEvent(
        id=row.id,
        name=row.name,
        modalities=row.modalities,
        active=row.active,
        working_hours=[
            events.WorkingHoursDetails(
                location_id=h.location_id, weekday=h.weekday, start=h.start, end=h.end
            )
            for h in hours.current_week(row, today)
        ],
    )


async def announce_location(session: AsyncSession, row: db.Location) -> None:
    event = events.make_event(events.LOCATION_UPDATED, SOURCE, location_event(row), subject=row.id)
    await enqueue(session, event)


async def announce_therapist(session: AsyncSession, row: db.Therapist, today: date) -> None:
    data = therapist_event(row, today)
    await enqueue(session, events.make_event(events.THERAPIST_UPDATED, SOURCE, data, row.id))


# ---------------------------------------------------------------------------------------
# The changes


def _apply(row: Any, changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if value is None:
            raise InvalidRequest(key, "cannot be null; leave it out to keep it")
        setattr(row, key, value)


async def _location(session: AsyncSession, location_id: str) -> db.Location:
    location = await session.get(
        db.Location, location_id, options=[selectinload(db.Location.rooms)]
    )
    if location is None:
        raise NotFound("location", location_id)
    return location


async def patch_location(app: Booking, location_id: str, data: LocationPatch) -> db.Location:
    """A timezone change is refused while the location has future sessions: their local
    times (and texts already planned) would silently shift."""
    changes = data.model_dump(exclude_unset=True)
    if changes.get("phone") is not None:
        changes["phone"] = normalize_phone(changes["phone"], app.default_phone_region)
    async with app.uow.write() as session:
        location = await _location(session, location_id)
        if "timezone" in changes and changes["timezone"] != location.timezone:
            future = await session.scalar(
                select(db.Session.id)
                .where(
                    db.Session.location_id == location_id,
                    db.Session.end_at > app.clock(),
                    db.Session.status.in_(hours.LIVE),
                )
                .limit(1)
            )
            if future is not None:
                raise domain.TimezoneInUse(
                    "the timezone cannot change while the location has future sessions",
                    field="timezone",
                )
        _apply(location, changes)
        await announce_location(session, location)
        return location


async def patch_room(app: Booking, location_id: str, room_id: str, data: RoomPatch) -> db.Room:
    changes = data.model_dump(exclude_unset=True)
    async with app.uow.write() as session:
        location = await _location(session, location_id)
        room = next((r for r in location.rooms if r.id == room_id), None)
        if room is None:
            raise NotFound("room", room_id)
        if changes.get("name") and any(
            r.name == changes["name"] and r.id != room_id for r in location.rooms
        ):
            raise domain.RoomNameTaken(
                f"location {location_id} already has a room named {changes['name']!r}",
                field="name",
            )
        _apply(room, changes)
        await announce_location(session, location)
        return room


async def patch_service(app: Booking, service_id: str, data: ServicePatch) -> db.Treatment:
    """Length and buffer apply to new bookings; booked sessions keep the span they hold."""
    async with app.uow.write() as session:
        treatment = await get_or_404(session, db.Treatment, service_id, "service")
        _apply(treatment, data.model_dump(exclude_unset=True))
        return treatment


async def patch_therapist(app: Booking, therapist_id: str, data: TherapistPatch) -> db.Therapist:
    changes = data.model_dump(exclude_unset=True)
    if changes.get("modalities") is not None:
        changes["modalities"] = sorted(set(changes["modalities"]))
    async with app.uow.write() as session:
        therapist = await hours.load_therapist(session, therapist_id)
        _apply(therapist, changes)
        await announce_therapist(session, therapist, app.clock().date())
        return therapist
