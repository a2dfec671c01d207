"""Sessions: book one, move it, and every other change of its status.

Each use case checks again inside its write transaction (the slot shown a moment ago may
be gone), changes the row, bumps its version and queues its ``booking.session.*`` event,
which carries the client's ``manage_url``. On PostgreSQL two exclusion constraints back
the check; their violation reads as :class:`~services.booking.domain.SlotTaken`.

A change may name the version it was asked on (``expected_version``, the client's page
form): if the session moved on meanwhile, nothing changes (:class:`StaleVersion`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.booking import db, domain, queries
from services.booking.schemas import SessionIn
from services.booking.scope import get_visible, visible
from services.booking.setup_cache import TOKEN, LocationInfo, Setup, TreatmentInfo
from services.booking.usecases import SOURCE, Booking, get_or_404
from services.booking.usecases.clients import client_ref
from services.booking.waitlist import offers as waitlist
from shared import events
from shared.auth import EVERYTHING, Scope
from shared.db import batch_writes, run_inline
from shared.errors import NotFound
from shared.ids import new_id
from shared.outbox import enqueue


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
        client=client_ref(row.client),
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


async def announce_session(
    app: Booking, session: AsyncSession, row: db.Session, event_type: str, **extra: Any
) -> None:
    """Queue the session's event, with the signed link to the client's own page."""
    data = session_event(row, manage_url=app.manage_url(row.id), **extra)
    await enqueue(session, events.make_event(event_type, SOURCE, data, subject=row.id))


def _request_hash(data: SessionIn) -> str:
    return hashlib.sha256(data.model_dump_json().encode()).hexdigest()


async def replay_idempotent(
    app: Booking, key: str, data: SessionIn
) -> tuple[int, dict[str, Any]] | None:
    """The stored first answer for ``key``, or ``None`` when the key is new."""
    async with app.uow.read() as session:
        stored = await session.get(db.IdempotentRequest, key)
    if stored is None:
        return None
    if stored.request_hash != _request_hash(data):
        raise domain.IdempotencyMismatch(
            "this Idempotency-Key was already used for a different request"
        )
    return stored.status_code, json.loads(stored.response_body)


async def _place(
    session: AsyncSession,
    app: Booking,
    setup: Setup,
    *,
    location: LocationInfo,
    treatment: TreatmentInfo,
    start: datetime,
    therapist_id: str | None,
    exclude_session: str | None = None,
) -> tuple[str, str]:
    """Choose therapist and room for ``start`` inside the write transaction."""
    domain.check_booking_window(start, app.clock(), location.policy)
    if not treatment.active:
        raise domain.NotOffered(f"service {treatment.id} is retired and no longer offered")
    end = start + timedelta(minutes=treatment.duration_minutes)
    if setup.closed(location.id, start, end):
        raise domain.LocationClosed(f"location {location.id} is closed at that time")
    lookup = domain.Interval(start - timedelta(days=1), start + timedelta(days=1))
    therapists, rooms = await queries.staff_calendars(
        session,
        setup,
        location,
        lookup,
        modality=treatment.modality,
        therapist_id=therapist_id,
        exclude_session=exclude_session,
    )
    if therapist_id is not None and not therapists:
        therapist = setup.therapist(therapist_id)
        if not therapist.active:
            raise domain.TherapistUnavailable(f"therapist {therapist_id} is no longer active")
        if treatment.modality not in therapist.modalities:
            raise domain.TherapistUnavailable(
                f"therapist {therapist_id} does not offer {treatment.modality}"
            )
        raise domain.OutsideWorkingHours(
            f"therapist {therapist_id} does not work at location {location.id}"
        )
    return domain.choose_for_booking(
        treatment.rule,
        location.id,
        location.tz,
        start,
        therapists,
        rooms,
        therapist_id=therapist_id,
    )


def overlap_error(exc: IntegrityError) -> domain.SlotTaken | None:
    """PostgreSQL's exclusion constraints say which resource was taken."""
    text = str(exc.orig)
    if "sessions_therapist_no_overlap" in text:
        return domain.SlotTaken("the therapist was booked for that time a moment ago")
    if "sessions_room_no_overlap" in text:
        return domain.SlotTaken("the room was booked for that time a moment ago")
    return None


_C = db.Client.__table__
#: The client a booking is for, with the set-up token read in the same statement.
CLIENT_AND_SETUP = select(
    _C.c.id,
    _C.c.first_name,
    _C.c.phone,
    _C.c.sms_consent,
    _C.c.language,
    TOKEN.scalar_subquery().label("setup_token"),
)
INSERT_SESSION = insert(db.Session)


async def book_in(
    session: AsyncSession, app: Booking, data: SessionIn, *, scope: Scope
) -> db.Session:
    """Book a session inside the caller's write transaction: choose therapist and room if
    not given, check again, write with its event. ``POST /v1/sessions`` and a claimed
    waitlist offer both book through here.

    The hot path of the service: Core statements built once, the set-up from the
    process's copy (checked in this transaction, ``setup_cache``), so a booking runs four
    statements: client with set-up token, busy time, the session, its event."""
    query = CLIENT_AND_SETUP.where(_C.c.id == data.client_id)
    if not scope.everything:
        query = query.where(visible(db.Client, scope))
    connection = await session.connection()
    client = (await connection.execute(query)).first()
    setup = await app.setup.current(session, client.setup_token if client else None)
    location = setup.location(data.location_id, scope)
    treatment = setup.treatment(data.service_id)
    if client is None:
        raise NotFound("client", data.client_id)
    therapist_id, room_id = await _place(
        session,
        app,
        setup,
        location=location,
        treatment=treatment,
        start=data.start,
        therapist_id=data.therapist_id,
    )
    now = app.clock()
    duration = timedelta(minutes=treatment.duration_minutes)
    values: dict[str, Any] = {
        "id": new_id(),
        "client_id": client.id,
        "treatment_id": treatment.id,
        "location_id": location.id,
        "therapist_id": therapist_id,
        "room_id": room_id,
        "start_at": data.start,
        "end_at": data.start + duration,
        "blocked_until": data.start + duration + timedelta(minutes=treatment.buffer_minutes),
        "status": domain.BOOKED,
        "version": 1,
        "cancel_reason": None,
        "late_cancel": False,
        "created_at": now,
        "updated_at": now,
    }
    await connection.execute(INSERT_SESSION, values)
    event = events.SessionEvent(
        session_id=values["id"],
        version=1,
        status=domain.BOOKED,
        start=values["start_at"],
        end=values["end_at"],
        reason=None,
        late_cancel=None,
        client=events.ClientRef(
            id=client.id,
            first_name=client.first_name,
            phone=client.phone,
            sms_consent=client.sms_consent,
            language=client.language,
        ),
        therapist=setup.therapists[therapist_id].ref,
        location=location.ref,
        service=treatment.ref,
        room_id=room_id,
        manage_url=app.manage_url(values["id"]),
    )
    await enqueue(
        session, events.make_event(events.SESSION_BOOKED, SOURCE, event, subject=values["id"])
    )
    # What the answer is rendered from: the row as written (not in the ORM session).
    return db.Session(**values)


async def book(
    app: Booking,
    data: SessionIn,
    idempotency_key: str | None,
    render: Callable[[db.Session], dict[str, Any]],
    *,
    scope: Scope,
) -> dict[str, Any]:
    """Book a session (:func:`book_in`) in a transaction of its own, remembering the answer
    under ``idempotency_key``. A front desk books at its locations, for clients it can see."""
    try:
        async with app.uow.write() as session:
            # The writes (session, event, idempotency record) go with the commit: one hop
            # on SQLite instead of four. A reused key then raises at the commit, still
            # inside this block.
            await batch_writes(session)
            await run_inline(session)
            row = await book_in(session, app, data, scope=scope)
            body = render(row)
            if idempotency_key is not None:
                session.add(
                    db.IdempotentRequest(
                        key=idempotency_key,
                        request_hash=_request_hash(data),
                        status_code=201,
                        response_body=json.dumps(body, default=str),
                        created_at=row.created_at,
                    )
                )
            return body
    except IntegrityError as exc:
        taken = overlap_error(exc)
        if taken is not None:
            raise taken from exc
        if idempotency_key is not None:
            replay = await replay_idempotent(app, idempotency_key, data)
            if replay is not None:
                return replay[1]
        raise


#: Changes after which the session's old time may go to the waitlist. A no-show is not
#: one: its time has come and gone.
FREES_ITS_SLOT = ("cancel", "reschedule")


async def _transition(
    app: Booking,
    session_id: str,
    action: str,
    event_type: str,
    change: Callable[[AsyncSession, db.Session], Any] | None = None,
    *,
    scope: Scope,
    expected_version: int | None = None,
) -> db.Session:
    try:
        async with app.uow.write() as session:
            row = await get_visible(session, db.Session, session_id, "session", scope)
            if expected_version is not None and row.version != expected_version:
                raise domain.StaleVersion("the session changed meanwhile; nothing was changed")
            target = domain.next_status(row.status, action)
            before = waitlist.freed(row)
            extra: dict[str, Any] = {}
            if change is not None:
                extra = (await change(session, row)) or {}
            row.status = target
            row.version += 1
            row.updated_at = app.clock()
            await announce_session(app, session, row, event_type, **extra)
            if action in FREES_ITS_SLOT and waitlist.left(before, row):
                await waitlist.slot_freed(session, app, before)
            return row
    except IntegrityError as exc:
        taken = overlap_error(exc)
        if taken is not None:
            raise taken from exc
        raise


async def reschedule(
    app: Booking,
    session_id: str,
    start: datetime,
    therapist_id: str | None,
    location_id: str | None = None,
    *,
    any_therapist: bool = False,
    expected_version: int | None = None,
    scope: Scope = EVERYTHING,
) -> db.Session:
    """Move a session, checked as a new booking. The therapist stays unless another is
    named, the location changes, or ``any_therapist`` (the client's page) says so; the
    room may change."""

    async def move(session: AsyncSession, row: db.Session) -> dict[str, Any]:
        previous = row.start_at
        setup = await app.setup.current(session)
        location = setup.locations[row.location_id]
        if location_id is not None and location_id != row.location_id:
            location = setup.location(location_id, scope)
        keep = not any_therapist and location.id == row.location_id
        therapist, room_id = await _place(
            session,
            app,
            setup,
            location=location,
            treatment=setup.treatments[row.treatment_id],
            start=start,
            therapist_id=therapist_id or (row.therapist_id if keep else None),
            exclude_session=row.id,
        )
        if location.id != row.location_id:
            moved_to = await get_or_404(session, db.Location, location.id, "location")
            row.location, row.location_id = moved_to, location.id
        duration = timedelta(minutes=row.treatment.duration_minutes)
        if therapist != row.therapist_id:
            row.therapist = await get_or_404(session, db.Therapist, therapist, "therapist")
        row.therapist_id, row.room_id = therapist, room_id
        row.start_at, row.end_at = start, start + duration
        row.blocked_until = start + duration + timedelta(minutes=row.treatment.buffer_minutes)
        return {"previous_start": previous}

    return await _transition(
        app,
        session_id,
        "reschedule",
        events.SESSION_RESCHEDULED,
        move,
        scope=scope,
        expected_version=expected_version,
    )


async def cancel(
    app: Booking,
    session_id: str,
    reason: str,
    *,
    expected_version: int | None = None,
    scope: Scope = EVERYTHING,
) -> db.Session:
    async def mark(_session: AsyncSession, row: db.Session) -> None:
        row.cancel_reason = reason
        row.late_cancel = domain.is_late_cancel(
            row.start_at, app.clock(), timedelta(hours=row.location.late_cancel_hours)
        )

    return await _transition(
        app,
        session_id,
        "cancel",
        events.SESSION_CANCELLED,
        mark,
        scope=scope,
        expected_version=expected_version,
    )


async def confirm(
    app: Booking, session_id: str, *, expected_version: int | None = None
) -> db.Session:
    """The client confirms (the client's page; a texted C goes through ``replies``)."""
    return await _transition(
        app,
        session_id,
        "confirm",
        events.SESSION_CONFIRMED,
        scope=EVERYTHING,
        expected_version=expected_version,
    )


async def check_in(app: Booking, session_id: str, *, scope: Scope = EVERYTHING) -> db.Session:
    return await _transition(app, session_id, "check_in", events.SESSION_CHECKED_IN, scope=scope)


async def complete(app: Booking, session_id: str, *, scope: Scope = EVERYTHING) -> db.Session:
    return await _transition(app, session_id, "complete", events.SESSION_COMPLETED, scope=scope)


async def no_show(app: Booking, session_id: str, *, scope: Scope = EVERYTHING) -> db.Session:
    return await _transition(app, session_id, "no_show", events.SESSION_NO_SHOW, scope=scope)
