"""Availability: the free starts of a treatment at a location, with the therapist and room
a booking would get (``GET /v1/availability``, the client's reschedule page).

Why its own module: an answer reads a thousand sessions, so it reads only the four columns
it needs through a covering index (migration 0008), turns them into integers column-wise,
and hands them to the pure computation in ``services.booking.free_time`` (the rules, the
same as the booking check's). Sessions at any location keep a therapist busy; closures
block the location's therapists and rooms; time off and the therapist's own calendar's
busy time block the therapist.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from itertools import compress
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import String, bindparam, literal, null, select, type_coerce, union_all

from services.booking import db, domain
from services.booking.free_time import (
    EPOCH,
    US,
    Offer,
    Span,
    Staff,
    as_json,
    as_slots,
    bookable_window,
    local_date,
    merge,
    micros,
    offers,
)
from services.booking.usecases import Booking
from shared.auth import Scope
from shared.errors import InvalidRequest

#: The longest window one request may ask for.
MAX_AVAILABILITY_DAYS = 62
#: No stored session lasts longer than this (treatment plus buffer); it bounds the index
#: range read for sessions that start before a window and reach into it.
LONGEST_SESSION = timedelta(days=1)

# ---------------------------------------------------------------------------------------
# The query

_EPOCH_NAIVE = EPOCH.replace(tzinfo=None)


_S, _T, _E = db.Session.__table__, db.TimeOff.__table__, db.ExternalBusy.__table__


def _raw(column: Any) -> Any:
    """The column as the driver gives it (SQLite: its text; PostgreSQL: a datetime), turned
    into microseconds once per distinct value by :class:`_Instants`."""
    return type_coerce(column, String())


#: What keeps staff and rooms busy in a range, in one statement: live sessions at any
#: location (the covering index ``ix_sessions_window`` answers it without the table), then
#: the therapists' time off and the busy time read from their own calendars.
BUSY = union_all(
    select(
        _S.c.therapist_id, _S.c.room_id, _raw(_S.c.start_at), _raw(_S.c.blocked_until), literal(1)
    ).where(
        _S.c.start_at >= bindparam("reach"),
        _S.c.start_at < bindparam("end"),
        _S.c.blocked_until > bindparam("start"),
        _S.c.status.in_(domain.BLOCKING_STATUSES),
    ),
    select(_T.c.therapist_id, null(), _raw(_T.c.start_at), _raw(_T.c.end_at), literal(0)).where(
        _T.c.therapist_id.in_(bindparam("ids", expanding=True)),
        _T.c.start_at < bindparam("end"),
        _T.c.end_at > bindparam("start"),
    ),
    select(_E.c.therapist_id, null(), _raw(_E.c.start_at), _raw(_E.c.end_at), literal(0)).where(
        _E.c.therapist_id.in_(bindparam("ids", expanding=True)),
        _E.c.start_at < bindparam("end"),
        _E.c.end_at > bindparam("start"),
    ),
)


class _Instants(dict[Any, int]):
    """Driver values to microseconds, each distinct value converted once (sessions share a
    few start times a day)."""

    def __missing__(self, raw: Any) -> int:
        at = datetime.fromisoformat(raw) if isinstance(raw, str) else raw
        us = (at - _EPOCH_NAIVE) // US if at.tzinfo is None else (at - EPOCH) // US
        self[raw] = us
        return us


async def search(
    app: Booking,
    *,
    service_id: str,
    location_id: str,
    start: datetime,
    end: datetime,
    therapist_id: str | None = None,
    scope: Scope,
) -> list[domain.Slot]:
    """The free slots of ``[start, end)``, checked like a booking (see the module)."""
    duration, found = await _search(
        app, service_id, location_id, start, end, therapist_id=therapist_id, scope=scope
    )
    return as_slots(found, duration)


async def search_json(
    app: Booking,
    *,
    service_id: str,
    location_id: str,
    start: datetime,
    end: datetime,
    therapist_id: str | None = None,
    scope: Scope,
) -> bytes:
    """:func:`search`'s answer as the API sends it (``list[SlotOut]``), written straight
    from the integers (no datetimes, dataclasses or pydantic per slot)."""
    duration, found = await _search(
        app, service_id, location_id, start, end, therapist_id=therapist_id, scope=scope
    )
    return as_json(found, duration)


async def _search(
    app: Booking,
    service_id: str,
    location_id: str,
    start: datetime,
    end: datetime,
    *,
    therapist_id: str | None,
    scope: Scope,
) -> tuple[timedelta, list[Offer]]:
    if end <= start:
        raise InvalidRequest(None, "end must be after start")
    if end - start > timedelta(days=MAX_AVAILABILITY_DAYS):
        raise InvalidRequest(None, f"ask for at most {MAX_AVAILABILITY_DAYS} days at a time")
    now = app.clock()
    async with app.uow.read() as session:
        setup = await app.setup.current(session)
        location = setup.location(location_id, scope)
        treatment = setup.treatment(service_id)
        if not treatment.active:
            raise domain.NotOffered(f"service {treatment.id} is retired and no longer offered")
        if therapist_id is not None:
            setup.therapist(therapist_id, scope)
        rule, policy, tz = treatment.rule, location.policy, location.tz
        bookable = bookable_window(rule, policy, now, start, end)
        if bookable is None:
            return rule.duration, []
        earliest, latest = bookable
        staff_info = setup.staff(location.id, rule.modality)
        if therapist_id is not None:
            staff_info = [t for t in staff_info if t.id == therapist_id]
        room_ids = setup.rooms.get(location.id, ())
        if not staff_info or not room_ids:
            return rule.duration, []
        # Read whole local days (a day's load counts all its sessions, at any location)
        # and past the last start's buffer.
        lo = domain.local_datetime(earliest.astimezone(tz).date(), MIDNIGHT, tz)
        day_after = latest.astimezone(tz).date() + timedelta(days=1)
        hi = max(latest + rule.occupied, domain.local_datetime(day_after, MIDNIGHT, tz))
        closed = [(micros(c.start), micros(c.end)) for c in setup.closed(location.id, lo, hi)]
        rows = await (await session.connection()).execute(
            BUSY,
            {
                "start": lo,
                "end": hi,
                "reach": lo - LONGEST_SESSION,
                "ids": [t.id for t in staff_info],
            },
        )
        staff, rooms = _calendars(rows.all(), staff_info, room_ids, closed, tz)
    return rule.duration, offers(rule, location.id, tz, earliest, latest, staff, rooms, policy.step)


MIDNIGHT = datetime.min.time()


def _calendars(
    rows: Sequence[Any],
    staff_info: Sequence[Any],
    room_ids: Sequence[str],
    closed: list[Span],
    tz: ZoneInfo,
) -> tuple[list[Staff], list[tuple[str, list[Span]]]]:
    """Rows of :data:`BUSY` to each therapist's and room's busy spans (closures included)
    and each therapist's sessions per local day; column-wise, a thousand rows an answer."""
    by_therapist: dict[str, list[Span]] = defaultdict(list)
    by_room: dict[str, list[Span]] = defaultdict(list)
    loads: dict[str, dict[date, int]] = defaultdict(dict)
    if rows:
        tids, rids, raw_starts, raw_ends, is_session = zip(*rows, strict=True)
        instants = _Instants().__getitem__
        spans = list(zip(map(instants, raw_starts), map(instants, raw_ends), strict=True))
        for tid, span in zip(tids, spans, strict=True):
            by_therapist[tid].append(span)
        held = list(compress(spans, is_session))
        for rid, span in zip(compress(rids, is_session), held, strict=True):
            by_room[rid].append(span)
        days = map(_LocalDays(tz).__getitem__, map(itemgetter(0), held))
        for (tid, day), count in Counter(
            zip(compress(tids, is_session), days, strict=True)
        ).items():
            loads[tid][day] = count
    staff = [
        Staff(t.id, t.hours, merge(closed + by_therapist.get(t.id, [])), loads.get(t.id, {}))
        for t in staff_info
    ]
    return staff, [(rid, merge(closed + by_room.get(rid, []))) for rid in room_ids]


class _LocalDays(dict[int, date]):
    """Local dates of instants (microseconds), each distinct instant converted once."""

    def __init__(self, tz: ZoneInfo) -> None:
        super().__init__()
        self.tz = tz

    def __missing__(self, us: int) -> date:
        day = self[us] = local_date(us, self.tz)
        return day
