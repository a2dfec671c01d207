"""The front desk and an admin keep the schedule: a new week of working hours from a date
on, time off corrected or withdrawn, a location closed for a span.

Nothing here moves or cancels a booked session: a change that now overlaps one answers
with it (``conflicts``) and the front desk decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import date, datetime, time, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.booking import db, domain, hours
from services.booking.change_schemas import ClosureIn, TimeOffPatch, WorkingWeekIn
from services.booking.usecases import Booking, get_or_404
from services.booking.usecases.changes import announce_therapist
from services.booking.usecases.setup import weekly_hours
from shared.errors import InvalidRequest, NotFound
from shared.ids import new_id
from shared.timeutil import zone

# ---------------------------------------------------------------------------------------
# Working hours as versions


async def put_working_week(
    app: Booking, therapist_id: str, data: WorkingWeekIn
) -> tuple[db.Therapist, list[db.Session]]:
    """The new week holds from ``effective_from`` (each location's local date) until the
    next version; a version already on that date is replaced. Answers the booked sessions
    in that stretch the new week no longer covers."""
    domain.check_hours_do_not_overlap([weekly_hours(h) for h in data.working_hours])
    since = data.effective_from
    async with app.uow.write() as session:
        therapist = await hours.load_therapist(session, therapist_id)
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
            [replace(weekly_hours(h), valid_from=since) for h in data.working_hours], starts
        )
        until = next((d for d in starts if d > since), None)
        clashes = await _outside_week(session, app, therapist_id, week, since, until)
        await session.refresh(therapist, ["weeks"])
        await announce_therapist(session, therapist, app.clock().date())
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


# ---------------------------------------------------------------------------------------
# Time off and closures


async def _time_off(session: AsyncSession, therapist_id: str, time_off_id: str) -> db.TimeOff:
    entry: db.TimeOff = await get_or_404(session, db.TimeOff, time_off_id, "time off")
    if entry.therapist_id != therapist_id:
        raise NotFound("time off", time_off_id)
    return entry


async def patch_time_off(
    app: Booking, therapist_id: str, time_off_id: str, data: TimeOffPatch
) -> tuple[db.TimeOff, list[db.Session]]:
    changes = data.model_dump(exclude_unset=True)
    async with app.uow.write() as session:
        entry = await _time_off(session, therapist_id, time_off_id)
        for key in ("start", "end"):
            if key in changes:
                if changes[key] is None:
                    raise InvalidRequest(key, "cannot be null; leave it out to keep it")
                setattr(entry, f"{key}_at", changes[key])
        if "reason" in changes:
            entry.reason = changes["reason"]
        if entry.end_at <= entry.start_at:
            raise InvalidRequest("end", "must be after start")
        clashes = await hours.sessions_overlapping(
            session, entry.start_at, entry.end_at, therapist_id=therapist_id
        )
        return entry, clashes


async def delete_time_off(app: Booking, therapist_id: str, time_off_id: str) -> None:
    async with app.uow.write() as session:
        await session.delete(await _time_off(session, therapist_id, time_off_id))


async def add_closure(
    app: Booking, location_id: str, data: ClosureIn
) -> tuple[db.Closure, list[db.Session]]:
    async with app.uow.write() as session:
        await get_or_404(session, db.Location, location_id, "location")
        closure = db.Closure(
            id=new_id(),
            location_id=location_id,
            start_at=data.start,
            end_at=data.end,
            reason=data.reason,
            created_at=app.clock(),
        )
        session.add(closure)
        clashes = await hours.sessions_overlapping(
            session, data.start, data.end, location_id=location_id
        )
        return closure, clashes


async def delete_closure(app: Booking, location_id: str, closure_id: str) -> None:
    async with app.uow.write() as session:
        result = await session.execute(
            delete(db.Closure).where(
                db.Closure.id == closure_id, db.Closure.location_id == location_id
            )
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise NotFound("closure", closure_id)
