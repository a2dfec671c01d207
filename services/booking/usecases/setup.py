"""An admin sets up the clinic: locations and their rooms, treatments, therapists with
their weekly hours, time off, and the secret tokens of the ICS feeds."""

from __future__ import annotations

import secrets
from datetime import time

from sqlalchemy import select

from services.booking import db, domain, hours
from services.booking.schemas import LocationIn, TherapistIn, TimeOffIn, TreatmentIn, WorkingHoursIn
from services.booking.scope import get_visible
from services.booking.usecases import Booking, get_or_404
from shared.auth import Scope
from shared.errors import InvalidRequest
from shared.ids import new_id
from shared.phones import normalize_phone


def weekly_hours(hours: WorkingHoursIn) -> domain.WeeklyHours:
    return domain.WeeklyHours(
        hours.location_id,
        hours.weekday,
        time.fromisoformat(hours.start),
        time.fromisoformat(hours.end),
    )


async def create_location(app: Booking, data: LocationIn) -> db.Location:
    phone = normalize_phone(data.phone, app.default_phone_region)
    async with app.uow.write() as session:
        location = db.Location(
            id=new_id(),
            **data.model_dump(exclude={"phone"}),
            phone=phone,
            ics_token=secrets.token_urlsafe(24),
            created_at=app.clock(),
        )
        session.add(location)
        await session.flush()
        await session.refresh(location, ["rooms"])
        return location


async def add_room(app: Booking, location_id: str, name: str) -> db.Room:
    async with app.uow.write() as session:
        await get_or_404(session, db.Location, location_id, "location")
        clash = await session.scalar(
            select(db.Room.id).where(db.Room.location_id == location_id, db.Room.name == name)
        )
        if clash is not None:
            raise domain.RoomNameTaken(
                f"location {location_id} already has a room named {name!r}", field="name"
            )
        room = db.Room(id=new_id(), location_id=location_id, name=name)
        session.add(room)
        return room


async def new_ics_token(
    app: Booking, model: type[db.Location] | type[db.Therapist], ident: str
) -> str:
    """Issue a new feed token; the old URL stops working at once."""
    async with app.uow.write() as session:
        row = await get_or_404(session, model, ident, model.__tablename__.rstrip("s"))
        row.ics_token = secrets.token_urlsafe(24)
        return str(row.ics_token)


async def create_treatment(app: Booking, data: TreatmentIn) -> db.Treatment:
    async with app.uow.write() as session:
        treatment = db.Treatment(id=new_id(), **data.model_dump())
        session.add(treatment)
        return treatment


async def create_therapist(app: Booking, data: TherapistIn) -> db.Therapist:
    domain.check_hours_do_not_overlap([weekly_hours(h) for h in data.working_hours])
    async with app.uow.write() as session:
        for location_id in {h.location_id for h in data.working_hours}:
            if await session.get(db.Location, location_id) is None:
                raise InvalidRequest(
                    "working_hours", f"names location {location_id}, which does not exist"
                )
        therapist = db.Therapist(
            id=new_id(),
            name=data.name,
            modalities=sorted(set(data.modalities)),
            ics_token=secrets.token_urlsafe(24),
            created_at=app.clock(),
            working_hours=[db.WorkingHours(**h.model_dump()) for h in data.working_hours],
        )
        session.add(therapist)
        return therapist


async def add_time_off(
    app: Booking, therapist_id: str, data: TimeOffIn, *, scope: Scope
) -> tuple[db.TimeOff, list[db.Session]]:
    """Record time off; returns it with the sessions already booked inside it (left booked:
    the front desk decides)."""
    async with app.uow.write() as session:
        await get_visible(session, db.Therapist, therapist_id, "therapist", scope)
        entry = db.TimeOff(
            id=new_id(),
            therapist_id=therapist_id,
            start_at=data.start,
            end_at=data.end,
            reason=data.reason,
        )
        session.add(entry)
        clashes = await hours.sessions_overlapping(
            session, data.start, data.end, therapist_id=therapist_id
        )
        return entry, clashes
