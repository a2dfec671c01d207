"""Booking's read queries: what the API shows and what availability is computed from.

Nothing here writes. ``staff_calendars`` is also what a booking checks again inside its
write transaction (``usecases.sessions``), so the slot offered and the slot booked are
judged by the same rules.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, bindparam, literal, null, select, type_coerce, union_all
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from services.booking import db, domain
from services.booking.calendar import ical
from services.booking.scope import get_visible, visible
from services.booking.setup_cache import LocationInfo, Setup
from services.booking.usecases import Booking, get_or_404
from shared.auth import Scope
from shared.errors import NotFound
from shared.pagination import PageRequest, keyset
from shared.phones import normalize_phone

# ---------------------------------------------------------------------------------------
# Locations, treatments, therapists


def name_key(row: db.Location | db.Room | db.Treatment | db.Therapist) -> tuple[str, str]:
    """The sort key of the lists by name (the id breaks ties between equal names)."""
    return (row.name, row.id)


NAME_KINDS = (str, str)


async def list_locations(app: Booking, *, page: PageRequest, scope: Scope) -> Sequence[db.Location]:
    async with app.uow.read() as session:
        query = (
            select(db.Location)
            .where(visible(db.Location, scope))
            .options(selectinload(db.Location.rooms))
        )
        query = keyset(query, page, (db.Location.name, db.Location.id), NAME_KINDS)
        return (await session.scalars(query)).all()


async def get_location(app: Booking, location_id: str, *, scope: Scope) -> db.Location:
    async with app.uow.read() as session:
        return await get_visible(
            session,
            db.Location,
            location_id,
            "location",
            scope,
            options=[selectinload(db.Location.rooms)],
        )


async def list_rooms(
    app: Booking, location_id: str, *, page: PageRequest, scope: Scope
) -> Sequence[db.Room]:
    async with app.uow.read() as session:
        await get_visible(session, db.Location, location_id, "location", scope)
        query = select(db.Room).where(db.Room.location_id == location_id)
        query = keyset(query, page, (db.Room.name, db.Room.id), NAME_KINDS)
        return (await session.scalars(query)).all()


async def list_treatments(app: Booking, *, page: PageRequest) -> Sequence[db.Treatment]:
    async with app.uow.read() as session:
        query = keyset(select(db.Treatment), page, (db.Treatment.name, db.Treatment.id), NAME_KINDS)
        return (await session.scalars(query)).all()


async def get_treatment(app: Booking, treatment_id: str) -> db.Treatment:
    async with app.uow.read() as session:
        return await get_or_404(session, db.Treatment, treatment_id, "service")


async def list_therapists(
    app: Booking, location_id: str | None = None, *, page: PageRequest, scope: Scope
) -> Sequence[db.Therapist]:
    async with app.uow.read() as session:
        query = (
            select(db.Therapist)
            .where(visible(db.Therapist, scope))
            .options(selectinload(db.Therapist.working_hours))
        )
        if location_id is not None:
            query = query.where(
                db.Therapist.id.in_(
                    select(db.WorkingHours.therapist_id).where(
                        db.WorkingHours.location_id == location_id
                    )
                )
            )
        query = keyset(query, page, (db.Therapist.name, db.Therapist.id), NAME_KINDS)
        return (await session.scalars(query)).all()


async def get_therapist(app: Booking, therapist_id: str, *, scope: Scope) -> db.Therapist:
    async with app.uow.read() as session:
        return await get_visible(
            session,
            db.Therapist,
            therapist_id,
            "therapist",
            scope,
            options=[selectinload(db.Therapist.working_hours)],
        )


async def list_time_off(
    app: Booking, therapist_id: str, *, page: PageRequest, scope: Scope
) -> Sequence[db.TimeOff]:
    async with app.uow.read() as session:
        await get_visible(session, db.Therapist, therapist_id, "therapist", scope)
        query = select(db.TimeOff).where(db.TimeOff.therapist_id == therapist_id)
        query = keyset(query, page, (db.TimeOff.start_at, db.TimeOff.id), SPAN_KINDS)
        return (await session.scalars(query)).all()


SPAN_KINDS = (datetime, str)


def span_key(row: db.TimeOff | db.Closure) -> tuple[datetime, str]:
    return (row.start_at, row.id)


# ---------------------------------------------------------------------------------------
# Clients


async def get_client(app: Booking, client_id: str, *, scope: Scope) -> db.Client:
    async with app.uow.read() as session:
        return await get_visible(session, db.Client, client_id, "client", scope)


#: Clients page by name, then id (``CLIENT_KEY`` reads the same key off a row).
CLIENT_ORDER = (db.Client.last_name, db.Client.first_name, db.Client.id)
CLIENT_KINDS = (str, str, str)


def client_key(row: db.Client) -> tuple[str, str, str]:
    return (row.last_name, row.first_name, row.id)


async def list_clients(
    app: Booking, phone: str | None = None, *, page: PageRequest, scope: Scope
) -> Sequence[db.Client]:
    """One page of the clients in scope, plus one row to tell whether more follow."""
    async with app.uow.read() as session:
        query = select(db.Client).where(visible(db.Client, scope))
        if phone:
            query = query.where(db.Client.phone == normalize_phone(phone, app.default_phone_region))
        query = keyset(query, page, CLIENT_ORDER, CLIENT_KINDS)
        return (await session.scalars(query)).all()


# ---------------------------------------------------------------------------------------
# Availability


def policy_of(location: db.Location) -> domain.BookingPolicy:
    return domain.BookingPolicy(
        min_notice=timedelta(minutes=location.min_notice_minutes),
        horizon=timedelta(days=location.horizon_days),
        step=timedelta(minutes=location.slot_step_minutes),
    )


def treatment_of(row: db.Treatment) -> domain.Treatment:
    return domain.Treatment(row.id, row.modality, row.duration_minutes, row.buffer_minutes)


def check_offered(treatment: db.Treatment) -> None:
    """A retired treatment is offered no more (its booked sessions stay)."""
    if not treatment.active:
        raise domain.NotOffered(f"service {treatment.id} is retired and no longer offered")


#: No stored session lasts longer than this (treatment plus buffer). It bounds the index
#: range read for sessions that start before a window and reach into it.
LONGEST_SESSION = timedelta(days=1)


_S, _T, _E = db.Session.__table__, db.TimeOff.__table__, db.ExternalBusy.__table__


def _plain(column: Any) -> Any:
    """``column`` read as the driver gives it: naive UTC on SQLite, aware on PostgreSQL
    (made aware in :func:`staff_calendars`, without ``UtcDateTime``'s call per value:
    an availability answer reads a thousand rows)."""
    return type_coerce(column, DateTime())


#: Everything that keeps staff and rooms busy in a window, in one statement built once:
#: live sessions (any location; ``is_session`` 1), then the therapists' time off and the
#: busy time read from their own calendars (calendar_sync's pull links).
BUSY = union_all(
    select(
        _S.c.therapist_id,
        _S.c.room_id,
        _plain(_S.c.start_at),
        _plain(_S.c.blocked_until),
        literal(1),
    ).where(
        _S.c.start_at < bindparam("end"),
        _S.c.start_at >= bindparam("reach"),
        _S.c.blocked_until > bindparam("start"),
        _S.c.status.in_(domain.BLOCKING_STATUSES),
        _S.c.id != bindparam("exclude"),
    ),
    select(_T.c.therapist_id, null(), _plain(_T.c.start_at), _plain(_T.c.end_at), literal(0)).where(
        _T.c.therapist_id.in_(bindparam("ids", expanding=True)),
        _T.c.start_at < bindparam("end"),
        _T.c.end_at > bindparam("start"),
    ),
    select(_E.c.therapist_id, null(), _plain(_E.c.start_at), _plain(_E.c.end_at), literal(0)).where(
        _E.c.therapist_id.in_(bindparam("ids", expanding=True)),
        _E.c.start_at < bindparam("end"),
        _E.c.end_at > bindparam("start"),
    ),
)


async def staff_calendars(
    session: AsyncSession,
    setup: Setup,
    location: LocationInfo,
    window: domain.Interval,
    *,
    modality: str,
    therapist_id: str | None = None,
    exclude_session: str | None = None,
) -> tuple[list[domain.TherapistCalendar], list[domain.RoomCalendar]]:
    """Active therapists who work at ``location`` and do ``modality``, and the location's
    active rooms, each with everything that keeps them busy during ``window`` (at any
    location); each week of hours holds on its own dates, and a closure of the location
    blocks everyone there.

    Staff, hours, rooms and closures come from ``setup`` (checked against the database in
    this transaction, ``setup_cache``); sessions, time off and outside busy time from one
    statement.
    """
    tz = location.tz
    staff = setup.staff(location.id, modality)
    if therapist_id is not None:
        staff = [t for t in staff if t.id == therapist_id]
    # A closed location blocks every therapist and room there.
    closed = setup.closed(location.id, window.start, window.end)
    rooms: dict[str, list[domain.Interval]] = {
        rid: list(closed) for rid in setup.rooms.get(location.id, ())
    }
    busy: dict[str, list[domain.Interval]] = {t.id: list(closed) for t in staff}
    load: dict[str, dict[date, int]] = {t.id: defaultdict(int) for t in staff}
    connection = await session.connection()
    rows = await connection.execute(
        BUSY,
        {
            "start": window.start,
            "end": window.end,
            "reach": window.start - LONGEST_SESSION,
            "exclude": exclude_session or "",
            "ids": list(busy),
        },
    )
    local_day: dict[datetime, date] = {}  # sessions share a few start times a day
    for tid, rid, start, until, is_session in rows:
        if start.tzinfo is None:  # SQLite stores naive UTC
            start, until = start.replace(tzinfo=UTC), until.replace(tzinfo=UTC)
        span = domain.Interval(start, until)
        if tid in busy:
            busy[tid].append(span)
            if is_session:
                day = local_day.get(start)
                if day is None:
                    day = local_day[start] = start.astimezone(tz).date()
                load[tid][day] += 1
        if is_session and rid in rooms:
            rooms[rid].append(span)

    only = frozenset({modality})
    therapists = [
        domain.TherapistCalendar(
            id=t.id,
            modalities=only,
            hours=list(t.hours),
            busy=busy[t.id],
            load_by_day=dict(load[t.id]),
        )
        for t in staff
    ]
    return therapists, [domain.RoomCalendar(rid, spans) for rid, spans in rooms.items()]


# ---------------------------------------------------------------------------------------
# Sessions


async def get_session(app: Booking, session_id: str, *, scope: Scope) -> db.Session:
    async with app.uow.read() as session:
        return await get_visible(session, db.Session, session_id, "session", scope)


async def list_sessions(
    app: Booking,
    *,
    location_id: str | None = None,
    therapist_id: str | None = None,
    client_id: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    status: str | None = None,
    page: PageRequest,
    scope: Scope,
) -> Sequence[db.Session]:
    """One page of the sessions in scope by ``(start_at, id)``, plus one row past it."""
    async with app.uow.read() as session:
        query = select(db.Session).where(visible(db.Session, scope))
        if location_id:
            query = query.where(db.Session.location_id == location_id)
        if therapist_id:
            query = query.where(db.Session.therapist_id == therapist_id)
        if client_id:
            query = query.where(db.Session.client_id == client_id)
        if start:
            query = query.where(db.Session.end_at > start)
        if end:
            query = query.where(db.Session.start_at < end)
        if status:
            query = query.where(db.Session.status == status)
        query = keyset(query, page, SESSION_ORDER, SESSION_KINDS)
        return (await session.scalars(query)).unique().all()


SESSION_ORDER = (db.Session.start_at, db.Session.id)
SESSION_KINDS = (datetime, str)


def session_key(row: db.Session) -> tuple[datetime, str]:
    return (row.start_at, row.id)


# ---------------------------------------------------------------------------------------
# ICS feeds


#: What a feed (and a push calendar) holds: the last month and the next year.
FEED_PAST = timedelta(days=30)
FEED_FUTURE = timedelta(days=365)


async def _feed_sessions(
    session: AsyncSession, now: datetime, **where: str
) -> Sequence[db.Session]:
    query = select(db.Session).where(
        db.Session.start_at > now - FEED_PAST, db.Session.start_at < now + FEED_FUTURE
    )
    for column, value in where.items():
        query = query.where(getattr(db.Session, column) == value)
    return (await session.scalars(query.order_by(db.Session.start_at))).unique().all()


async def room_names(session: AsyncSession, rows: Sequence[db.Session]) -> dict[str, str]:
    ids = {r.room_id for r in rows}
    if not ids:
        return {}
    return {
        rid: name
        for rid, name in await session.execute(
            select(db.Room.id, db.Room.name).where(db.Room.id.in_(ids))
        )
    }


async def therapist_feed(app: Booking, therapist_id: str, token: str) -> bytes:
    now = app.clock()
    async with app.uow.read() as session:
        therapist = await session.get(db.Therapist, therapist_id)
        if therapist is None or not secrets.compare_digest(
            therapist.ics_token.encode(), token.encode()
        ):
            raise NotFound("calendar", therapist_id)
        rows = await _feed_sessions(session, now, therapist_id=therapist_id)
        offs = (
            await session.scalars(
                select(db.TimeOff).where(
                    db.TimeOff.therapist_id == therapist_id, db.TimeOff.end_at > now - FEED_PAST
                )
            )
        ).all()
        return ical.feed(therapist.name, rows, await room_names(session, rows), now, offs)


async def location_feed(app: Booking, location_id: str, token: str) -> bytes:
    now = app.clock()
    async with app.uow.read() as session:
        location = await session.get(db.Location, location_id)
        if location is None or not secrets.compare_digest(
            location.ics_token.encode(), token.encode()
        ):
            raise NotFound("calendar", location_id)
        rows = await _feed_sessions(session, now, location_id=location_id)
        return ical.feed(location.name, rows, await room_names(session, rows), now)
