"""Booking's use cases: each one a transaction that changes state and queues its event."""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from services.booking import db, domain, ics
from services.booking.schemas import (
    ClientIn,
    ClientPatch,
    LocationIn,
    SessionIn,
    TherapistIn,
    TimeOffIn,
    TreatmentIn,
)
from shared import events
from shared.auth import Role, create_key
from shared.db import transaction
from shared.outbox import enqueue
from shared.phones import normalize_phone
from shared.timeutil import utcnow, zone

SOURCE = "booking"


class NotFound(Exception):
    """A referenced row does not exist (404, or 422 when it was named in a body)."""

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident} not found")
        self.kind = kind
        self.ident = ident


class InvalidRequest(Exception):
    """The request is well formed but cannot be applied (422)."""


class IdempotencyMismatch(InvalidRequest):
    """An Idempotency-Key was reused for a different request."""


@dataclass
class Booking:
    """Everything a use case needs: the database, a clock, and who to tell after a commit."""

    sessions: async_sessionmaker[AsyncSession]
    clock: Callable[[], datetime] = utcnow
    default_phone_region: str = "US"
    on_commit: Callable[[], None] = lambda: None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A serialized write transaction; the outbox relay is woken once it commits."""
        async with transaction(self.sessions, write=True) as session:
            yield session
        self.on_commit()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with transaction(self.sessions) as session:
            yield session


def new_id() -> str:
    return str(uuid.uuid4())


async def _get(session: AsyncSession, model: type[Any], ident: str, kind: str) -> Any:
    row = await session.get(model, ident)
    if row is None:
        raise NotFound(kind, ident)
    return row


# ---------------------------------------------------------------------------------------
# Locations, rooms, treatments, therapists


async def create_location(app: Booking, data: LocationIn) -> db.Location:
    phone = normalize_phone(data.phone, app.default_phone_region)
    async with app.write() as session:
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


async def list_locations(app: Booking) -> Sequence[db.Location]:
    async with app.read() as session:
        result = await session.scalars(
            select(db.Location).options(selectinload(db.Location.rooms)).order_by(db.Location.name)
        )
        return result.all()


async def get_location(app: Booking, location_id: str) -> db.Location:
    async with app.read() as session:
        location = await session.get(
            db.Location, location_id, options=[selectinload(db.Location.rooms)]
        )
        if location is None:
            raise NotFound("location", location_id)
        return location


async def add_room(app: Booking, location_id: str, name: str) -> db.Room:
    async with app.write() as session:
        await _get(session, db.Location, location_id, "location")
        clash = await session.scalar(
            select(db.Room.id).where(db.Room.location_id == location_id, db.Room.name == name)
        )
        if clash is not None:
            raise InvalidRequest(f"location {location_id} already has a room named {name!r}")
        room = db.Room(id=new_id(), location_id=location_id, name=name)
        session.add(room)
        return room


async def list_rooms(app: Booking, location_id: str) -> Sequence[db.Room]:
    async with app.read() as session:
        await _get(session, db.Location, location_id, "location")
        result = await session.scalars(
            select(db.Room).where(db.Room.location_id == location_id).order_by(db.Room.name)
        )
        return result.all()


async def new_ics_token(
    app: Booking, model: type[db.Location] | type[db.Therapist], ident: str
) -> str:
    """Issue a new feed token; the old URL stops working at once."""
    async with app.write() as session:
        row = await _get(session, model, ident, model.__tablename__.rstrip("s"))
        row.ics_token = secrets.token_urlsafe(24)
        return str(row.ics_token)


async def create_treatment(app: Booking, data: TreatmentIn) -> db.Treatment:
    async with app.write() as session:
        treatment = db.Treatment(id=new_id(), **data.model_dump())
        session.add(treatment)
        return treatment


async def list_treatments(app: Booking) -> Sequence[db.Treatment]:
    async with app.read() as session:
        return (await session.scalars(select(db.Treatment).order_by(db.Treatment.name))).all()


async def get_treatment(app: Booking, treatment_id: str) -> db.Treatment:
    async with app.read() as session:
        return await _get(session, db.Treatment, treatment_id, "service")


def _check_hours_do_not_overlap(hours: Sequence[Any]) -> None:
    """A therapist cannot be at two places (or twice at one) at the same wall-clock time."""
    by_day: dict[int, list[Any]] = defaultdict(list)
    for h in hours:
        by_day[h.weekday].append(h)
    for weekday, items in by_day.items():
        items.sort(key=lambda h: h.start)
        for earlier, later in itertools.pairwise(items):
            if later.start < earlier.end:
                raise InvalidRequest(
                    f"working hours overlap on weekday {weekday}: "
                    f"{earlier.start}-{earlier.end} and {later.start}-{later.end}"
                )


async def create_therapist(app: Booking, data: TherapistIn) -> db.Therapist:
    _check_hours_do_not_overlap(data.working_hours)
    async with app.write() as session:
        for location_id in {h.location_id for h in data.working_hours}:
            if await session.get(db.Location, location_id) is None:
                raise InvalidRequest(
                    f"working_hours names location {location_id}, which does not exist"
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


async def list_therapists(app: Booking, location_id: str | None = None) -> Sequence[db.Therapist]:
    async with app.read() as session:
        query = (
            select(db.Therapist)
            .options(selectinload(db.Therapist.working_hours))
            .order_by(db.Therapist.name)
        )
        if location_id is not None:
            query = query.where(
                db.Therapist.id.in_(
                    select(db.WorkingHours.therapist_id).where(
                        db.WorkingHours.location_id == location_id
                    )
                )
            )
        return (await session.scalars(query)).all()


async def get_therapist(app: Booking, therapist_id: str) -> db.Therapist:
    async with app.read() as session:
        therapist = await session.get(
            db.Therapist, therapist_id, options=[selectinload(db.Therapist.working_hours)]
        )
        if therapist is None:
            raise NotFound("therapist", therapist_id)
        return therapist


async def add_time_off(
    app: Booking, therapist_id: str, data: TimeOffIn
) -> tuple[db.TimeOff, list[str]]:
    """Record time off; returns it with the sessions already booked inside it, to be moved."""
    async with app.write() as session:
        await _get(session, db.Therapist, therapist_id, "therapist")
        entry = db.TimeOff(
            id=new_id(),
            therapist_id=therapist_id,
            start_at=data.start,
            end_at=data.end,
            reason=data.reason,
        )
        session.add(entry)
        clashes = await session.scalars(
            select(db.Session.id).where(
                db.Session.therapist_id == therapist_id,
                db.Session.status.in_(domain.BLOCKING_STATUSES),
                db.Session.start_at < data.end,
                db.Session.blocked_until > data.start,
            )
        )
        return entry, list(clashes)


async def list_time_off(app: Booking, therapist_id: str) -> Sequence[db.TimeOff]:
    async with app.read() as session:
        await _get(session, db.Therapist, therapist_id, "therapist")
        result = await session.scalars(
            select(db.TimeOff)
            .where(db.TimeOff.therapist_id == therapist_id)
            .order_by(db.TimeOff.start_at)
        )
        return result.all()


# ---------------------------------------------------------------------------------------
# Clients


def client_details(client: db.Client) -> events.ClientDetails:
    return events.ClientDetails(
        id=client.id,
        first_name=client.first_name,
        last_name=client.last_name,
        date_of_birth=client.date_of_birth,
        phone=client.phone,
        email=client.email,
        sms_consent=client.sms_consent,
    )


async def _announce_client(session: AsyncSession, client: db.Client, event_type: str) -> None:
    await enqueue(
        session,
        events.make_event(
            event_type, SOURCE, events.ClientEvent(client=client_details(client)), subject=client.id
        ),
    )


async def create_client(app: Booking, data: ClientIn) -> db.Client:
    phone = normalize_phone(data.phone, app.default_phone_region)
    now = app.clock()
    async with app.write() as session:
        client = db.Client(
            id=new_id(),
            first_name=data.first_name,
            last_name=data.last_name,
            phone=phone,
            email=str(data.email) if data.email else None,
            date_of_birth=data.date_of_birth,
            sms_consent=data.sms_consent,
            sms_consent_at=now if data.sms_consent else None,
            sms_consent_source=data.sms_consent_source if data.sms_consent else None,
            created_at=now,
            updated_at=now,
        )
        session.add(client)
        await session.flush()
        await _announce_client(session, client, events.CLIENT_CREATED)
        return client


def _set_consent(client: db.Client, consent: bool, source: str, now: datetime) -> None:
    if client.sms_consent != consent:
        client.sms_consent = consent
        client.sms_consent_at = now
        client.sms_consent_source = source


async def update_client(app: Booking, client_id: str, data: ClientPatch) -> db.Client:
    now = app.clock()
    async with app.write() as session:
        client: db.Client = await _get(session, db.Client, client_id, "client")
        changes = data.model_dump(exclude_unset=True, exclude={"sms_consent", "sms_consent_source"})
        if "phone" in changes and changes["phone"] is not None:
            changes["phone"] = normalize_phone(changes["phone"], app.default_phone_region)
        if "email" in changes and changes["email"] is not None:
            changes["email"] = str(changes["email"])
        for key, value in changes.items():
            setattr(client, key, value)
        if data.sms_consent is not None:
            _set_consent(client, data.sms_consent, data.sms_consent_source, now)
        client.updated_at = now
        await _announce_client(session, client, events.CLIENT_UPDATED)
        return client


async def get_client(app: Booking, client_id: str) -> db.Client:
    async with app.read() as session:
        return await _get(session, db.Client, client_id, "client")


async def list_clients(
    app: Booking, phone: str | None = None, limit: int = 100, offset: int = 0
) -> Sequence[db.Client]:
    async with app.read() as session:
        query = (
            select(db.Client)
            .order_by(db.Client.last_name, db.Client.first_name)
            .limit(limit)
            .offset(offset)
        )
        if phone:
            query = query.where(db.Client.phone == normalize_phone(phone, app.default_phone_region))
        return (await session.scalars(query)).all()


# ---------------------------------------------------------------------------------------
# Availability


def _policy(location: db.Location) -> domain.BookingPolicy:
    return domain.BookingPolicy(
        min_notice=timedelta(minutes=location.min_notice_minutes),
        horizon=timedelta(days=location.horizon_days),
        step=timedelta(minutes=location.slot_step_minutes),
    )


def _treatment(row: db.Treatment) -> domain.Treatment:
    return domain.Treatment(row.id, row.modality, row.duration_minutes, row.buffer_minutes)


#: No stored session lasts longer than this (treatment plus buffer). It bounds the index
#: range read for sessions that start before a window and reach into it.
LONGEST_SESSION = timedelta(days=1)


async def _calendars(
    session: AsyncSession,
    location: db.Location,
    window: domain.Interval,
    *,
    modality: str,
    therapist_id: str | None = None,
    exclude_session: str | None = None,
) -> tuple[list[domain.TherapistCalendar], list[domain.RoomCalendar]]:
    """Therapists who work at ``location`` and do ``modality``, and the location's rooms,
    each with everything that keeps them busy during ``window`` (at any location).

    Four queries whatever the size of the clinic: staff with their hours, rooms, live
    sessions in the window, and time off plus outside-calendar busy time.
    """
    tz = zone(location.timezone)
    works_here = select(db.WorkingHours.therapist_id).where(
        db.WorkingHours.location_id == location.id
    )
    staff_query = (
        select(
            db.Therapist.id,
            db.Therapist.modalities,
            db.WorkingHours.location_id,
            db.WorkingHours.weekday,
            db.WorkingHours.start,
            db.WorkingHours.end,
        )
        .join(db.WorkingHours, db.WorkingHours.therapist_id == db.Therapist.id)
        .where(db.Therapist.id.in_(works_here))
    )
    if therapist_id is not None:
        staff_query = staff_query.where(db.Therapist.id == therapist_id)
    hours: dict[str, list[domain.WeeklyHours]] = defaultdict(list)
    for tid, modalities, location_id, weekday, opens, closes in await session.execute(staff_query):
        if modality in modalities:
            hours[tid].append(
                domain.WeeklyHours(
                    location_id, weekday, time.fromisoformat(opens), time.fromisoformat(closes)
                )
            )

    room_ids = sorted(
        await session.scalars(select(db.Room.id).where(db.Room.location_id == location.id))
    )
    rooms: dict[str, list[domain.Interval]] = {rid: [] for rid in room_ids}
    busy: dict[str, list[domain.Interval]] = {tid: [] for tid in hours}
    load: dict[str, dict[date, int]] = {tid: defaultdict(int) for tid in hours}

    live = select(
        db.Session.therapist_id, db.Session.room_id, db.Session.start_at, db.Session.blocked_until
    ).where(
        db.Session.start_at < window.end,
        db.Session.start_at >= window.start - LONGEST_SESSION,
        db.Session.blocked_until > window.start,
        db.Session.status.in_(domain.BLOCKING_STATUSES),
    )
    if exclude_session is not None:
        live = live.where(db.Session.id != exclude_session)
    for tid, rid, start, until in await session.execute(live):
        span = domain.Interval(start, until)
        if tid in busy:
            busy[tid].append(span)
            load[tid][start.astimezone(tz).date()] += 1
        if rid in rooms:
            rooms[rid].append(span)

    if busy:
        off = select(db.TimeOff.therapist_id, db.TimeOff.start_at, db.TimeOff.end_at).where(
            db.TimeOff.therapist_id.in_(busy),
            db.TimeOff.start_at < window.end,
            db.TimeOff.end_at > window.start,
        )
        # Busy time read from the therapist's own calendar (calendar_sync's pull links).
        outside = select(
            db.ExternalBusy.therapist_id, db.ExternalBusy.start_at, db.ExternalBusy.end_at
        ).where(
            db.ExternalBusy.therapist_id.in_(busy),
            db.ExternalBusy.start_at < window.end,
            db.ExternalBusy.end_at > window.start,
        )
        for tid, start, end in await session.execute(union_all(off, outside)):
            busy[tid].append(domain.Interval(start, end))

    therapists = [
        domain.TherapistCalendar(
            id=tid,
            modalities=frozenset({modality}),
            hours=hours[tid],
            busy=busy[tid],
            load_by_day=dict(load[tid]),
        )
        for tid in sorted(hours)
    ]
    return therapists, [domain.RoomCalendar(rid, spans) for rid, spans in rooms.items()]


MAX_AVAILABILITY_DAYS = 62


async def availability(
    app: Booking,
    *,
    service_id: str,
    location_id: str,
    start: datetime,
    end: datetime,
    therapist_id: str | None = None,
) -> list[domain.Slot]:
    if end <= start:
        raise InvalidRequest("end must be after start")
    if end - start > timedelta(days=MAX_AVAILABILITY_DAYS):
        raise InvalidRequest(f"ask for at most {MAX_AVAILABILITY_DAYS} days at a time")
    async with app.read() as session:
        location: db.Location = await _get(session, db.Location, location_id, "location")
        treatment: db.Treatment = await _get(session, db.Treatment, service_id, "service")
        if therapist_id is not None:
            await _get(session, db.Therapist, therapist_id, "therapist")
        window = domain.Interval(start, end)
        # Busy spans that start before the window can still reach into it.
        lookup = domain.Interval(start - timedelta(days=1), end + timedelta(days=1))
        therapists, rooms = await _calendars(
            session, location, lookup, modality=treatment.modality, therapist_id=therapist_id
        )
    return domain.available_slots(
        _treatment(treatment),
        location.id,
        zone(location.timezone),
        window,
        therapists,
        rooms,
        now=app.clock(),
        policy=_policy(location),
    )


# ---------------------------------------------------------------------------------------
# Sessions


def session_event(row: db.Session, **extra: Any) -> events.SessionEvent:
    """The event-carried state of a session: what reminders and referrals need, no more."""
    return events.SessionEvent(
        session_id=row.id,
        version=row.version,
        status=row.status,
        start=row.start_at,
        end=row.end_at,
        reason=row.cancel_reason if row.status == domain.CANCELLED else None,
        late_cancel=row.late_cancel if row.status == domain.CANCELLED else None,
        client=events.ClientRef(
            id=row.client.id,
            first_name=row.client.first_name,
            phone=row.client.phone,
            sms_consent=row.client.sms_consent,
        ),
        therapist=events.TherapistRef(id=row.therapist.id, display_name=row.therapist.name),
        location=events.LocationRef(
            id=row.location.id,
            name=row.location.name,
            timezone=row.location.timezone,
            address=row.location.address,
            phone=row.location.phone,
        ),
        service=events.ServiceRef(
            id=row.treatment.id,
            name=row.treatment.name,
            modality=row.treatment.modality,
            duration_minutes=row.treatment.duration_minutes,
        ),
        room_id=row.room_id,
        **extra,
    )


async def _announce_session(
    session: AsyncSession, row: db.Session, event_type: str, **extra: Any
) -> None:
    await enqueue(
        session, events.make_event(event_type, SOURCE, session_event(row, **extra), subject=row.id)
    )


def _request_hash(data: SessionIn) -> str:
    return hashlib.sha256(data.model_dump_json().encode()).hexdigest()


async def replay_idempotent(
    app: Booking, key: str, data: SessionIn
) -> tuple[int, dict[str, Any]] | None:
    """The stored first answer for ``key``, or ``None`` when the key is new."""
    async with app.read() as session:
        stored = await session.get(db.IdempotentRequest, key)
    if stored is None:
        return None
    if stored.request_hash != _request_hash(data):
        raise IdempotencyMismatch("this Idempotency-Key was already used for a different request")
    return stored.status_code, json.loads(stored.response_body)


async def _place(
    session: AsyncSession,
    app: Booking,
    *,
    location: db.Location,
    treatment: db.Treatment,
    start: datetime,
    therapist_id: str | None,
    exclude_session: str | None = None,
) -> tuple[str, str]:
    """Choose therapist and room for ``start`` inside the write transaction."""
    domain.check_booking_window(start, app.clock(), _policy(location))
    lookup = domain.Interval(start - timedelta(days=1), start + timedelta(days=1))
    therapists, rooms = await _calendars(
        session,
        location,
        lookup,
        modality=treatment.modality,
        therapist_id=therapist_id,
        exclude_session=exclude_session,
    )
    if therapist_id is not None and not therapists:
        therapist = await _get(session, db.Therapist, therapist_id, "therapist")
        if treatment.modality not in therapist.modalities:
            raise domain.TherapistUnavailable(
                f"therapist {therapist_id} does not offer {treatment.modality}"
            )
        raise domain.OutsideWorkingHours(
            f"therapist {therapist_id} does not work at location {location.id}"
        )
    return domain.choose_for_booking(
        _treatment(treatment),
        location.id,
        zone(location.timezone),
        start,
        therapists,
        rooms,
        therapist_id=therapist_id,
    )


def _overlap_error(exc: IntegrityError) -> domain.SlotTaken | None:
    """PostgreSQL's exclusion constraints say which resource was taken."""
    text = str(exc.orig)
    if "sessions_therapist_no_overlap" in text:
        return domain.SlotTaken("the therapist was booked for that time a moment ago")
    if "sessions_room_no_overlap" in text:
        return domain.SlotTaken("the room was booked for that time a moment ago")
    return None


async def book(
    app: Booking,
    data: SessionIn,
    idempotency_key: str | None,
    render: Callable[[db.Session], dict[str, Any]],
) -> dict[str, Any]:
    """Book a session: choose therapist and room if not given, check again, write with its event."""
    try:
        async with app.write() as session:
            location: db.Location = await _get(session, db.Location, data.location_id, "location")
            treatment: db.Treatment = await _get(session, db.Treatment, data.service_id, "service")
            client: db.Client = await _get(session, db.Client, data.client_id, "client")
            therapist_id, room_id = await _place(
                session,
                app,
                location=location,
                treatment=treatment,
                start=data.start,
                therapist_id=data.therapist_id,
            )
            now = app.clock()
            row = db.Session(
                id=new_id(),
                client_id=client.id,
                treatment_id=treatment.id,
                location_id=location.id,
                therapist_id=therapist_id,
                room_id=room_id,
                # The event is built from these; setting them saves reloading after flush.
                client=client,
                treatment=treatment,
                location=location,
                therapist=await _get(session, db.Therapist, therapist_id, "therapist"),
                start_at=data.start,
                end_at=data.start + timedelta(minutes=treatment.duration_minutes),
                blocked_until=data.start
                + timedelta(minutes=treatment.duration_minutes + treatment.buffer_minutes),
                status=domain.BOOKED,
                version=1,
                late_cancel=False,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            await _announce_session(session, row, events.SESSION_BOOKED)
            body = render(row)
            if idempotency_key is not None:
                session.add(
                    db.IdempotentRequest(
                        key=idempotency_key,
                        request_hash=_request_hash(data),
                        status_code=201,
                        response_body=json.dumps(body, default=str),
                        created_at=now,
                    )
                )
            return body
    except IntegrityError as exc:
        taken = _overlap_error(exc)
        if taken is not None:
            raise taken from exc
        if idempotency_key is not None:
            replay = await replay_idempotent(app, idempotency_key, data)
            if replay is not None:
                return replay[1]
        raise


async def get_session(app: Booking, session_id: str) -> db.Session:
    async with app.read() as session:
        return await _get(session, db.Session, session_id, "session")


async def list_sessions(
    app: Booking,
    *,
    location_id: str | None = None,
    therapist_id: str | None = None,
    client_id: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    status: str | None = None,
    limit: int = 500,
) -> Sequence[db.Session]:
    async with app.read() as session:
        query = select(db.Session).order_by(db.Session.start_at).limit(limit)
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
        return (await session.scalars(query)).unique().all()


async def _transition(
    app: Booking,
    session_id: str,
    action: str,
    event_type: str,
    change: Callable[[AsyncSession, db.Session], Any] | None = None,
) -> db.Session:
    try:
        async with app.write() as session:
            row: db.Session = await _get(session, db.Session, session_id, "session")
            target = domain.next_status(row.status, action)
            extra: dict[str, Any] = {}
            if change is not None:
                extra = (await change(session, row)) or {}
            row.status = target
            row.version += 1
            row.updated_at = app.clock()
            await _announce_session(session, row, event_type, **extra)
            return row
    except IntegrityError as exc:
        taken = _overlap_error(exc)
        if taken is not None:
            raise taken from exc
        raise


async def reschedule(
    app: Booking, session_id: str, start: datetime, therapist_id: str | None
) -> db.Session:
    async def move(session: AsyncSession, row: db.Session) -> dict[str, Any]:
        previous = row.start_at
        # Keep the same therapist unless a new one is named; the room may change.
        therapist, room_id = await _place(
            session,
            app,
            location=row.location,
            treatment=row.treatment,
            start=start,
            therapist_id=therapist_id or row.therapist_id,
            exclude_session=row.id,
        )
        duration = timedelta(minutes=row.treatment.duration_minutes)
        if therapist != row.therapist_id:
            row.therapist = await _get(session, db.Therapist, therapist, "therapist")
        row.therapist_id, row.room_id = therapist, room_id
        row.start_at, row.end_at = start, start + duration
        row.blocked_until = start + duration + timedelta(minutes=row.treatment.buffer_minutes)
        return {"previous_start": previous}

    return await _transition(app, session_id, "reschedule", events.SESSION_RESCHEDULED, move)


async def cancel(app: Booking, session_id: str, reason: str) -> db.Session:
    async def mark(_session: AsyncSession, row: db.Session) -> None:
        row.cancel_reason = reason
        row.late_cancel = domain.is_late_cancel(
            row.start_at, app.clock(), timedelta(hours=row.location.late_cancel_hours)
        )

    return await _transition(app, session_id, "cancel", events.SESSION_CANCELLED, mark)


async def check_in(app: Booking, session_id: str) -> db.Session:
    return await _transition(app, session_id, "check_in", events.SESSION_CHECKED_IN)


async def complete(app: Booking, session_id: str) -> db.Session:
    return await _transition(app, session_id, "complete", events.SESSION_COMPLETED)


async def no_show(app: Booking, session_id: str) -> db.Session:
    return await _transition(app, session_id, "no_show", events.SESSION_NO_SHOW)


# ---------------------------------------------------------------------------------------
# What other services tell us


async def apply_reply(session: AsyncSession, event: events.CloudEvent[Any], now: datetime) -> None:
    """A client texted C: their next booked session becomes confirmed."""
    reply: events.ReplyReceived = event.data
    if reply.intent != "confirm":
        return
    query = select(db.Session).where(db.Session.status == domain.BOOKED, db.Session.start_at > now)
    if reply.session_id:
        query = query.where(db.Session.id == reply.session_id)
    elif reply.client_id:
        query = query.where(db.Session.client_id == reply.client_id)
    else:
        query = query.where(
            db.Session.client_id.in_(select(db.Client.id).where(db.Client.phone == reply.phone))
        )
    row = (await session.scalars(query.order_by(db.Session.start_at).limit(1))).first()
    if row is None:
        return
    row.status = domain.next_status(row.status, "confirm")
    row.version += 1
    row.updated_at = now
    await _announce_session(session, row, events.SESSION_CONFIRMED)


async def apply_consent(
    session: AsyncSession, event: events.CloudEvent[Any], now: datetime
) -> None:
    """A phone opted out (STOP) or back in (START): every client with that phone follows."""
    change: events.ConsentChanged = event.data
    clients = (
        await session.scalars(select(db.Client).where(db.Client.phone == change.phone))
    ).all()
    for client in clients:
        if client.sms_consent == change.sms_consent:
            continue
        _set_consent(client, change.sms_consent, f"sms:{change.source}", now)
        client.updated_at = now
        await _announce_client(session, client, events.CLIENT_UPDATED)


# ---------------------------------------------------------------------------------------
# API keys


async def issue_api_key(
    app: Booking, name: str, role: Role, location_ids: list[str]
) -> tuple[str, str]:
    async with app.write() as session:
        for location_id in location_ids:
            await _get(session, db.Location, location_id, "location")
        if role == "front_desk" and not location_ids:
            raise InvalidRequest("a front_desk key needs at least one location_id")
        key_id = new_id()
        key = await create_key(
            session, key_id=key_id, name=name, role=role, location_ids=location_ids
        )
        return key_id, key


# ---------------------------------------------------------------------------------------
# ICS feeds

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


async def _room_names(session: AsyncSession, rows: Sequence[db.Session]) -> dict[str, str]:
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
    async with app.read() as session:
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
        return ics.calendar(therapist.name, rows, await _room_names(session, rows), now, offs)


async def location_feed(app: Booking, location_id: str, token: str) -> bytes:
    now = app.clock()
    async with app.read() as session:
        location = await session.get(db.Location, location_id)
        if location is None or not secrets.compare_digest(
            location.ics_token.encode(), token.encode()
        ):
            raise NotFound("calendar", location_id)
        rows = await _feed_sessions(session, now, location_id=location_id)
        return ics.calendar(location.name, rows, await _room_names(session, rows), now)
