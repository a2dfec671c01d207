"""Reading what shapes a day at a location: which week of hours holds on which date, and
when the location is closed. Nothing here writes.

Kept apart from ``queries`` so availability (``queries.staff_calendars``), the booking
check (``usecases.sessions``) and the changes after set-up (``usecases.schedule``) read
versions and closures the same way.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import date, datetime

from sqlalchemy import select, union
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from services.booking import db, domain
from services.booking.usecases import Booking, get_or_404
from shared.errors import NotFound
from shared.pagination import PageRequest, keyset
from shared.timeutil import utcnow


async def version_starts(
    session: AsyncSession, therapist_ids: Iterable[str]
) -> dict[str, list[date]]:
    """Each therapist's version dates, sorted: the week created with them and every PUT."""
    ids = list(therapist_ids)
    starts: dict[str, list[date]] = {tid: [] for tid in ids}
    if not ids:
        return starts
    query = union(
        select(db.WorkingHours.therapist_id, db.WorkingHours.effective_from).where(
            db.WorkingHours.therapist_id.in_(ids)
        ),
        select(db.WorkingWeek.therapist_id, db.WorkingWeek.effective_from).where(
            db.WorkingWeek.therapist_id.in_(ids)
        ),
    )
    for tid, since in await session.execute(query):
        starts[tid].append(since)
    for dates in starts.values():
        dates.sort()
    return starts


def bounded(
    hours: Sequence[domain.WeeklyHours], starts: Sequence[date]
) -> list[domain.WeeklyHours]:
    """``hours`` (each with ``valid_from``) ending where the therapist's next version starts."""
    out = []
    for h in hours:
        since = h.valid_from or db.FIRST_DAY
        i = bisect.bisect_right(starts, since)
        out.append(replace(h, valid_until=starts[i] if i < len(starts) else None))
    return out


def version_on(starts: Sequence[date], day: date) -> date | None:
    """The version date in force on ``day`` (None: before the first)."""
    i = bisect.bisect_right(starts, day)
    return starts[i - 1] if i else None


async def closures_between(
    session: AsyncSession, location_id: str, start: datetime, end: datetime
) -> list[domain.Interval]:
    """The spans ``location_id`` is closed that overlap ``[start, end)``."""
    rows = await session.execute(
        select(db.Closure.start_at, db.Closure.end_at).where(
            db.Closure.location_id == location_id,
            db.Closure.start_at < end,
            db.Closure.end_at > start,
        )
    )
    return [domain.Interval(s, e) for s, e in rows]


def version_dates(therapist: db.Therapist) -> list[date]:
    """A loaded therapist's version dates, sorted (as :func:`version_starts` reads them)."""
    return sorted(
        {h.effective_from for h in therapist.working_hours}
        | {w.effective_from for w in therapist.weeks}
    )


def current_week(therapist: db.Therapist, today: date | None = None) -> list[db.WorkingHours]:
    """The rows of the week in force on ``today`` (UTC date), or the first week if later."""
    starts = version_dates(therapist)
    since = version_on(starts, today or utcnow().date()) or (starts[0] if starts else None)
    return [h for h in therapist.working_hours if h.effective_from == since]


async def load_therapist(session: AsyncSession, therapist_id: str) -> db.Therapist:
    """The therapist with every version of their week loaded."""
    therapist = await session.get(
        db.Therapist, therapist_id, options=[selectinload(db.Therapist.working_hours)]
    )
    if therapist is None:
        raise NotFound("therapist", therapist_id)
    return therapist


async def working_weeks(
    app: Booking, therapist_id: str
) -> list[tuple[date, list[db.WorkingHours]]]:
    """Every version of the therapist's week, oldest first (``GET …/working-hours``)."""
    async with app.uow.read() as session:
        therapist = await load_therapist(session, therapist_id)
        return [
            (since, [h for h in therapist.working_hours if h.effective_from == since])
            for since in version_dates(therapist)
        ]


async def list_closures(
    app: Booking, location_id: str, *, page: PageRequest
) -> Sequence[db.Closure]:
    async with app.uow.read() as session:
        await get_or_404(session, db.Location, location_id, "location")
        query = select(db.Closure).where(db.Closure.location_id == location_id)
        query = keyset(query, page, (db.Closure.start_at, db.Closure.id), (datetime, str))
        return (await session.scalars(query)).all()


#: Sessions a change of hours, time off or closures can still matter to.
LIVE = (domain.BOOKED, domain.CONFIRMED, domain.CHECKED_IN)


async def sessions_overlapping(
    session: AsyncSession, start: datetime, end: datetime, **where: str
) -> list[db.Session]:
    """Live sessions holding time in ``[start, end)`` (buffer included), filtered by
    ``where`` (``therapist_id=…``, ``location_id=…``): a change's ``conflicts``."""
    query = select(db.Session).where(
        db.Session.status.in_(LIVE), db.Session.start_at < end, db.Session.blocked_until > start
    )
    for column, value in where.items():
        query = query.where(getattr(db.Session, column) == value)
    return list((await session.scalars(query.order_by(db.Session.start_at))).unique())
