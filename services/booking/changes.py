"""Changing the clinic after set-up: renames, retirements, new weeks of hours, time off
corrected or withdrawn, closures.

Nothing here moves or cancels a booked session: a change that now overlaps one answers
with it in ``conflicts`` and the front desk decides. Retiring a room, a treatment or a
therapist only stops new offers (``usecases._calendars`` and ``_place`` skip them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from services.booking import db, domain, hours
from services.booking.change_schemas import (
    ClosureIn,
    ConflictOut,
    LocationPatch,
    LocationUpdated,
    RoomPatch,
    ServicePatch,
    TherapistPatch,
    TherapistUpdated,
    TimeOffPatch,
    WorkingWeekIn,
)
from services.booking.schemas import RoomOut, WorkingHoursIn
from services.booking.usecases import SOURCE, Booking, _check_hours_do_not_overlap
from shared import events
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.ids import new_id
from shared.outbox import enqueue
from shared.phones import normalize_phone
from shared.timeutil import utcnow, zone

LOCATION_UPDATED = "booking.location.updated"
THERAPIST_UPDATED = "booking.therapist.updated"

#: Sessions a change can still matter to: not cancelled, not over.
LIVE = (domain.BOOKED, domain.CONFIRMED, domain.CHECKED_IN)


async def _get(session: AsyncSession, model: type[Any], ident: str, kind: str) -> Any:
    row = await session.get(model, ident)
    if row is None:
        raise NotFound(kind, ident)
    return row


def _apply(row: Any, changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if value is None:
            raise InvalidRequest(key, "cannot be null; leave it out to keep it")
        setattr(row, key, value)


async def _announce(session: AsyncSession, event_type: str, data: Any, subject: str) -> None:
    # Built as a plain envelope: shared.events does not list these types yet.
    event = events.AnyEvent(source=SOURCE, type=event_type, data=data, subject=subject)
    await enqueue(session, event)


# ---------------------------------------------------------------------------------------
# What the outside sees


def current_week(therapist: db.Therapist, today: date | None = None) -> list[db.WorkingHours]:
    """The rows of the week in force on ``today`` (UTC date), or the first week if later."""
    today = today or utcnow().date()
    starts = sorted(
        {h.effective_from for h in therapist.working_hours}
        | {w.effective_from for w in therapist.weeks}
    )
    since = hours.version_on(starts, today) or (starts[0] if starts else None)
    return [h for h in therapist.working_hours if h.effective_from == since]


def location_payload(row: db.Location) -> LocationUpdated:
    return LocationUpdated(
        id=row.id,
        name=row.name,
        timezone=row.timezone,
        address=row.address,
        phone=row.phone,
        min_notice_minutes=row.min_notice_minutes,
        horizon_days=row.horizon_days,
        late_cancel_hours=row.late_cancel_hours,
        slot_step_minutes=row.slot_step_minutes,
        rooms=[RoomOut.model_validate(r, from_attributes=True) for r in row.rooms],
    )


def therapist_payload(row: db.Therapist, today: date) -> TherapistUpdated:
    return TherapistUpdated(
        id=row.id,
        name=row.name,
        modalities=row.modalities,
        active=row.active,
        working_hours=[_hours_out(h) for h in current_week(row, today)],
    )


def _hours_out(h: db.WorkingHours) -> WorkingHoursIn:
    return WorkingHoursIn(location_id=h.location_id, weekday=h.weekday, start=h.start, end=h.end)


def conflict_out(row: db.Session) -> ConflictOut:
    return ConflictOut(
        session_id=row.id,
        start=row.start_at,
        end=row.end_at,
        status=row.status,
        therapist_id=row.therapist_id,
        location_id=row.location_id,
    )


async def _location(session: AsyncSession, location_id: str) -> db.Location:
    location = await session.get(
        db.Location, location_id, options=[selectinload(db.Location.rooms)]
    )
    if location is None:
        raise NotFound("location", location_id)
    return location


async def _therapist(session: AsyncSession, therapist_id: str) -> db.Therapist:
    therapist = await session.get(
        db.Therapist, therapist_id, options=[selectinload(db.Therapist.working_hours)]
    )
    if therapist is None:
        raise NotFound("therapist", therapist_id)
    return therapist


# ---------------------------------------------------------------------------------------
# Locations, rooms, services, therapists


async def patch_location(app: Booking, location_id: str, data: LocationPatch) -> db.Location:
    changes = data.model_dump(exclude_unset=True)
    if changes.get("phone") is not None:
        changes["phone"] = normalize_phone(changes["phone"], app.default_phone_region)
    async with app.write() as session:
        location = await _location(session, location_id)
        if "timezone" in changes and changes["timezone"] != location.timezone:
            future = await session.scalar(
                select(db.Session.id)
                .where(
                    db.Session.location_id == location_id,
                    db.Session.end_at > app.clock(),
                    db.Session.status.in_(LIVE),
                )
                .limit(1)
            )
            if future is not None:
                raise Conflict(
                    "the timezone cannot change while the location has future sessions",
                    field="timezone",
                )
        _apply(location, changes)
        await _announce(session, LOCATION_UPDATED, location_payload(location), location.id)
        return location


async def patch_room(app: Booking, location_id: str, room_id: str, data: RoomPatch) -> db.Room:
    changes = data.model_dump(exclude_unset=True)
    async with app.write() as session:
        location = await _location(session, location_id)
        room = next((r for r in location.rooms if r.id == room_id), None)
        if room is None:
            raise NotFound("room", room_id)
        if changes.get("name") and any(
            r.name == changes["name"] and r.id != room_id for r in location.rooms
        ):
            raise InvalidRequest("name", f"location {location_id} already has a room so named")
        _apply(room, changes)
        await _announce(session, LOCATION_UPDATED, location_payload(location), location.id)
        return room


async def patch_service(app: Booking, service_id: str, data: ServicePatch) -> db.Treatment:
    """Length and buffer apply to new bookings; booked sessions keep the span they hold."""
    async with app.write() as session:
        treatment = await _get(session, db.Treatment, service_id, "service")
        _apply(treatment, data.model_dump(exclude_unset=True))
        return treatment


async def patch_therapist(app: Booking, therapist_id: str, data: TherapistPatch) -> db.Therapist:
    changes = data.model_dump(exclude_unset=True)
    if changes.get("modalities") is not None:
        changes["modalities"] = sorted(set(changes["modalities"]))
    async with app.write() as session:
        therapist = await _therapist(session, therapist_id)
        _apply(therapist, changes)
        payload = therapist_payload(therapist, app.clock().date())
        await _announce(session, THERAPIST_UPDATED, payload, therapist.id)
        return therapist


# ---------------------------------------------------------------------------------------
# Working hours as versions


async def put_working_week(
    app: Booking, therapist_id: str, data: WorkingWeekIn
) -> tuple[db.Therapist, list[db.Session]]:
    """The new week holds from ``effective_from`` (each location's local date) until the
    next version; a version already on that date is replaced. Answers the booked sessions
    in that stretch the new week no longer covers."""
    _check_hours_do_not_overlap(data.working_hours)
    since = data.effective_from
    async with app.write() as session:
        therapist = await _therapist(session, therapist_id)
        for location_id in {h.location_id for h in data.working_hours}:
            if await session.get(db.Location, location_id) is None:
                raise InvalidRequest(
                    "working_hours", f"names location {location_id}, which does not exist"
                )
        for old in [h for h in therapist.working_hours if h.effective_from == since]:
            therapist.working_hours.remove(old)
        therapist.working_hours.extend(
            db.WorkingHours(**h.model_dump(), effective_from=since) for h in data.working_hours
        )
        if await session.get(db.WorkingWeek, (therapist_id, since)) is None:
            session.add(
                db.WorkingWeek(
                    therapist_id=therapist_id, effective_from=since, created_at=app.clock()
                )
            )
        await session.flush()
        starts = (await hours.version_starts(session, [therapist_id]))[therapist_id]
        week = hours.bounded(
            [
                domain.WeeklyHours(
                    h.location_id,
                    h.weekday,
                    time.fromisoformat(h.start),
                    time.fromisoformat(h.end),
                    valid_from=since,
                )
                for h in data.working_hours
            ],
            starts,
        )
        until = next((d for d in starts if d > since), None)
        clashes = await _outside_week(session, app, therapist_id, week, since, until)
        await session.refresh(therapist, ["weeks"])
        payload = therapist_payload(therapist, app.clock().date())
        await _announce(session, THERAPIST_UPDATED, payload, therapist.id)
        return therapist, clashes


async def _outside_week(
    session: AsyncSession,
    app: Booking,
    therapist_id: str,
    week: Sequence[domain.WeeklyHours],
    since: date,
    until: date | None,
) -> list[db.Session]:
    """Live sessions of the therapist on local dates ``[since, until)`` outside ``week``."""
    query = select(db.Session).where(
        db.Session.therapist_id == therapist_id,
        db.Session.status.in_((domain.BOOKED, domain.CONFIRMED)),
        db.Session.end_at > app.clock(),
        # A day's margin either side: local dates are checked below, per location.
        db.Session.start_at >= datetime.combine(since, time(), tzinfo=zone("UTC")) - timedelta(1),
    )
    if until is not None:
        query = query.where(
            db.Session.start_at < datetime.combine(until, time(), tzinfo=zone("UTC")) + timedelta(1)
        )
    clashes = []
    for row in (await session.scalars(query.order_by(db.Session.start_at))).unique():
        tz = zone(row.location.timezone)
        day = row.start_at.astimezone(tz).date()
        if day < since or (until is not None and day >= until):
            continue
        held = domain.Interval(row.start_at, row.end_at)
        seen = domain.Interval(row.start_at - timedelta(days=1), row.end_at + timedelta(days=1))
        spans = domain.working_spans(
            [replace(h, valid_until=until) for h in week], row.location_id, tz, seen
        )
        if not any(span.contains(held) for span in spans):
            clashes.append(row)
    return clashes


async def working_weeks(
    app: Booking, therapist_id: str
) -> list[tuple[date, list[db.WorkingHours]]]:
    """Every version of the therapist's week, oldest first."""
    async with app.read() as session:
        therapist = await _therapist(session, therapist_id)
        starts = sorted(
            {h.effective_from for h in therapist.working_hours}
            | {w.effective_from for w in therapist.weeks}
        )
        return [
            (since, [h for h in therapist.working_hours if h.effective_from == since])
            for since in starts
        ]


# ---------------------------------------------------------------------------------------
# Time off and closures


async def _overlapping(
    session: AsyncSession, start: datetime, end: datetime, **where: str
) -> list[db.Session]:
    query = select(db.Session).where(
        db.Session.status.in_(LIVE), db.Session.start_at < end, db.Session.blocked_until > start
    )
    for column, value in where.items():
        query = query.where(getattr(db.Session, column) == value)
    return list((await session.scalars(query.order_by(db.Session.start_at))).unique())


async def patch_time_off(
    app: Booking, therapist_id: str, time_off_id: str, data: TimeOffPatch
) -> tuple[db.TimeOff, list[db.Session]]:
    changes = data.model_dump(exclude_unset=True)
    async with app.write() as session:
        entry: db.TimeOff = await _get(session, db.TimeOff, time_off_id, "time off")
        if entry.therapist_id != therapist_id:
            raise NotFound("time off", time_off_id)
        for key in ("start", "end"):
            if key in changes:
                if changes[key] is None:
                    raise InvalidRequest(key, "cannot be null; leave it out to keep it")
                setattr(entry, f"{key}_at", changes[key])
        if "reason" in changes:
            entry.reason = changes["reason"]
        if entry.end_at <= entry.start_at:
            raise InvalidRequest("end", "must be after start")
        clashes = await _overlapping(
            session, entry.start_at, entry.end_at, therapist_id=therapist_id
        )
        return entry, clashes


async def delete_time_off(app: Booking, therapist_id: str, time_off_id: str) -> None:
    async with app.write() as session:
        entry: db.TimeOff = await _get(session, db.TimeOff, time_off_id, "time off")
        if entry.therapist_id != therapist_id:
            raise NotFound("time off", time_off_id)
        await session.delete(entry)


async def add_closure(
    app: Booking, location_id: str, data: ClosureIn
) -> tuple[db.Closure, list[db.Session]]:
    async with app.write() as session:
        await _get(session, db.Location, location_id, "location")
        closure = db.Closure(
            id=new_id(),
            location_id=location_id,
            start_at=data.start,
            end_at=data.end,
            reason=data.reason,
            created_at=app.clock(),
        )
        session.add(closure)
        clashes = await _overlapping(session, data.start, data.end, location_id=location_id)
        return closure, clashes


async def list_closures(app: Booking, location_id: str) -> Sequence[db.Closure]:
    async with app.read() as session:
        await _get(session, db.Location, location_id, "location")
        result = await session.scalars(
            select(db.Closure)
            .where(db.Closure.location_id == location_id)
            .order_by(db.Closure.start_at)
        )
        return result.all()


async def delete_closure(app: Booking, location_id: str, closure_id: str) -> None:
    async with app.write() as session:
        result = await session.execute(
            delete(db.Closure).where(
                db.Closure.id == closure_id, db.Closure.location_id == location_id
            )
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise NotFound("closure", closure_id)
