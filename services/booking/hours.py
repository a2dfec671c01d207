"""Reading what shapes a day at a location: which week of hours holds on which date, and
when the location is closed.

Kept apart from the use cases so both availability (``usecases._calendars``) and the
changes after set-up (``changes.py``) read versions and closures the same way.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import date, datetime

from sqlalchemy import select, union
from sqlalchemy.ext.asyncio import AsyncSession

from services.booking import db, domain


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
