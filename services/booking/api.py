"""Booking's HTTP routes: parse, authorize, call a use case, shape the answer.

Domain failures become HTTP statuses here and nowhere else.
"""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter

from services.booking import db, domain, usecases
from services.booking.calendar_secrets import SecretKeyUnusable
from services.booking.calendar_sync import CalendarSync, DuplicateLink, LinkView
from services.booking.schemas import (
    ApiKeyIn,
    ApiKeyOut,
    CalendarLinkIn,
    CalendarLinkOut,
    CancelIn,
    ClientIn,
    ClientOut,
    ClientPatch,
    LocationIn,
    LocationOut,
    RescheduleIn,
    RoomIn,
    RoomOut,
    SessionIn,
    SessionOut,
    SlotOut,
    TherapistIn,
    TherapistOut,
    TimeOffIn,
    TimeOffOut,
    TreatmentIn,
    TreatmentOut,
    WorkingHoursIn,
)
from shared.auth import Principal
from shared.phones import InvalidPhone
from shared.timeutil import as_utc
from shared.validation import Instant

SLOTS_JSON = TypeAdapter(list[domain.Slot])

ERROR_STATUS: dict[type[Exception], int] = {
    usecases.NotFound: 404,
    usecases.InvalidRequest: 422,
    InvalidPhone: 422,
    domain.TooSoon: 422,
    domain.TooFar: 422,
    domain.SlotTaken: 409,
    domain.OutsideWorkingHours: 409,
    domain.NoRoomFree: 409,
    domain.TherapistUnavailable: 409,
    domain.IllegalTransition: 409,
    DuplicateLink: 409,
    SecretKeyUnusable: 503,
}


def install_error_handlers(app: FastAPI) -> None:
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        status = next(code for kind, code in ERROR_STATUS.items() if isinstance(exc, kind))
        return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=status)

    for kind in ERROR_STATUS:
        app.add_exception_handler(kind, handle)


def location_out(row: db.Location, base_url: str) -> LocationOut:
    return LocationOut(
        id=row.id,
        name=row.name,
        timezone=row.timezone,
        address=row.address,
        phone=row.phone,
        min_notice_minutes=row.min_notice_minutes,
        horizon_days=row.horizon_days,
        late_cancel_hours=row.late_cancel_hours,
        slot_step_minutes=row.slot_step_minutes,
        rooms=[RoomOut(id=r.id, location_id=r.location_id, name=r.name) for r in row.rooms],
        ics_url=f"{base_url}/v1/calendars/locations/{row.id}.ics?token={row.ics_token}",
    )


def therapist_out(row: db.Therapist, base_url: str) -> TherapistOut:
    return TherapistOut(
        id=row.id,
        name=row.name,
        modalities=row.modalities,
        working_hours=[
            WorkingHoursIn(location_id=h.location_id, weekday=h.weekday, start=h.start, end=h.end)
            for h in row.working_hours
        ],
        ics_url=f"{base_url}/v1/calendars/therapists/{row.id}.ics?token={row.ics_token}",
    )


def client_out(row: db.Client) -> ClientOut:
    return ClientOut.model_validate(row, from_attributes=True)


def session_out(row: db.Session) -> SessionOut:
    return SessionOut(
        id=row.id,
        status=row.status,
        version=row.version,
        client_id=row.client_id,
        service_id=row.treatment_id,
        location_id=row.location_id,
        therapist_id=row.therapist_id,
        room_id=row.room_id,
        start=row.start_at,
        end=row.end_at,
        late_cancel=row.late_cancel,
        cancel_reason=row.cancel_reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def treatment_out(row: db.Treatment) -> TreatmentOut:
    return TreatmentOut.model_validate(row, from_attributes=True)


def calendar_link_out(view: LinkView) -> CalendarLinkOut:
    link = view.link
    return CalendarLinkOut(
        id=link.id,
        owner_type=link.owner_type,
        owner_id=link.owner_id,
        direction=link.direction,
        kind=link.kind,
        url=link.url,
        username=link.username,
        has_password=link.password_encrypted is not None,
        timezone=link.timezone,
        status=view.status,
        last_synced_at=link.last_synced_at,
        last_error=link.last_error,
        last_error_at=link.last_error_at,
        consecutive_failures=link.consecutive_failures,
        pending_pushes=view.pending_pushes,
        busy_spans=view.busy_spans,
        created_at=link.created_at,
    )


def build_router(
    booking: usecases.Booking,
    authenticate: Any,
    base_url: str,
    calendar: CalendarSync | None = None,
) -> APIRouter:
    router = APIRouter(prefix="/v1")
    Caller = Annotated[Principal, Depends(authenticate)]

    def admin(caller: Principal) -> None:
        caller.require_role("admin")

    # -- locations and rooms ---------------------------------------------------------
    @router.post("/locations", status_code=201, response_model=LocationOut, tags=["locations"])
    async def create_location(body: LocationIn, caller: Caller) -> LocationOut:
        admin(caller)
        return location_out(await usecases.create_location(booking, body), base_url)

    @router.get("/locations", response_model=list[LocationOut], tags=["locations"])
    async def list_locations(caller: Caller) -> list[LocationOut]:
        rows = await usecases.list_locations(booking)
        return [
            location_out(r, base_url)
            for r in rows
            if caller.is_admin or r.id in caller.location_ids
        ]

    @router.get("/locations/{location_id}", response_model=LocationOut, tags=["locations"])
    async def get_location(location_id: str, caller: Caller) -> LocationOut:
        caller.require_location(location_id)
        return location_out(await usecases.get_location(booking, location_id), base_url)

    @router.post(
        "/locations/{location_id}/rooms",
        status_code=201,
        response_model=RoomOut,
        tags=["locations"],
    )
    async def add_room(location_id: str, body: RoomIn, caller: Caller) -> RoomOut:
        admin(caller)
        room = await usecases.add_room(booking, location_id, body.name)
        return RoomOut(id=room.id, location_id=room.location_id, name=room.name)

    @router.get("/locations/{location_id}/rooms", response_model=list[RoomOut], tags=["locations"])
    async def list_rooms(location_id: str, caller: Caller) -> list[RoomOut]:
        caller.require_location(location_id)
        return [
            RoomOut(id=r.id, location_id=r.location_id, name=r.name)
            for r in await usecases.list_rooms(booking, location_id)
        ]

    @router.post("/locations/{location_id}/ics-token", tags=["calendars"])
    async def new_location_token(location_id: str, caller: Caller) -> dict[str, str]:
        admin(caller)
        token = await usecases.new_ics_token(booking, db.Location, location_id)
        return {"ics_url": f"{base_url}/v1/calendars/locations/{location_id}.ics?token={token}"}

    # -- treatments ("services" in the contract) -------------------------------------
    @router.post("/services", status_code=201, response_model=TreatmentOut, tags=["services"])
    async def create_service(body: TreatmentIn, caller: Caller) -> TreatmentOut:
        admin(caller)
        return treatment_out(await usecases.create_treatment(booking, body))

    @router.get("/services", response_model=list[TreatmentOut], tags=["services"])
    async def list_services(_caller: Caller) -> list[TreatmentOut]:
        return [treatment_out(r) for r in await usecases.list_treatments(booking)]

    @router.get("/services/{service_id}", response_model=TreatmentOut, tags=["services"])
    async def get_service(service_id: str, _caller: Caller) -> TreatmentOut:
        return treatment_out(await usecases.get_treatment(booking, service_id))

    # -- therapists -------------------------------------------------------------------
    @router.post("/therapists", status_code=201, response_model=TherapistOut, tags=["therapists"])
    async def create_therapist(body: TherapistIn, caller: Caller) -> TherapistOut:
        admin(caller)
        row = await usecases.create_therapist(booking, body)
        return therapist_out(await usecases.get_therapist(booking, row.id), base_url)

    @router.get("/therapists", response_model=list[TherapistOut], tags=["therapists"])
    async def list_therapists(
        _caller: Caller, location_id: str | None = None
    ) -> list[TherapistOut]:
        return [
            therapist_out(r, base_url) for r in await usecases.list_therapists(booking, location_id)
        ]

    @router.get("/therapists/{therapist_id}", response_model=TherapistOut, tags=["therapists"])
    async def get_therapist(therapist_id: str, _caller: Caller) -> TherapistOut:
        return therapist_out(await usecases.get_therapist(booking, therapist_id), base_url)

    @router.post("/therapists/{therapist_id}/ics-token", tags=["calendars"])
    async def new_therapist_token(therapist_id: str, caller: Caller) -> dict[str, str]:
        admin(caller)
        token = await usecases.new_ics_token(booking, db.Therapist, therapist_id)
        return {"ics_url": f"{base_url}/v1/calendars/therapists/{therapist_id}.ics?token={token}"}

    @router.post(
        "/therapists/{therapist_id}/time-off",
        status_code=201,
        response_model=TimeOffOut,
        tags=["therapists"],
    )
    async def add_time_off(therapist_id: str, body: TimeOffIn, caller: Caller) -> TimeOffOut:
        caller.require_role("admin", "front_desk")
        entry, clashes = await usecases.add_time_off(booking, therapist_id, body)
        return TimeOffOut(
            id=entry.id,
            therapist_id=therapist_id,
            start=entry.start_at,
            end=entry.end_at,
            reason=entry.reason,
            conflicting_session_ids=clashes,
        )

    @router.get(
        "/therapists/{therapist_id}/time-off", response_model=list[TimeOffOut], tags=["therapists"]
    )
    async def list_time_off(therapist_id: str, caller: Caller) -> list[TimeOffOut]:
        caller.require_role("admin", "front_desk")
        return [
            TimeOffOut(
                id=t.id, therapist_id=therapist_id, start=t.start_at, end=t.end_at, reason=t.reason
            )
            for t in await usecases.list_time_off(booking, therapist_id)
        ]

    # -- clients ----------------------------------------------------------------------
    @router.post("/clients", status_code=201, response_model=ClientOut, tags=["clients"])
    async def create_client(body: ClientIn, caller: Caller) -> ClientOut:
        caller.require_role("admin", "front_desk")
        return client_out(await usecases.create_client(booking, body))

    @router.get("/clients", response_model=list[ClientOut], tags=["clients"])
    async def list_clients(
        caller: Caller,
        phone: str | None = None,
        limit: int = Query(100, ge=1, le=500),
        offset: int = Query(0, ge=0, le=1_000_000),
    ) -> list[ClientOut]:
        caller.require_role("admin", "front_desk")
        return [client_out(c) for c in await usecases.list_clients(booking, phone, limit, offset)]

    @router.get("/clients/{client_id}", response_model=ClientOut, tags=["clients"])
    async def get_client(client_id: str, caller: Caller) -> ClientOut:
        caller.require_role("admin", "front_desk")
        return client_out(await usecases.get_client(booking, client_id))

    @router.patch("/clients/{client_id}", response_model=ClientOut, tags=["clients"])
    async def update_client(client_id: str, body: ClientPatch, caller: Caller) -> ClientOut:
        caller.require_role("admin", "front_desk")
        return client_out(await usecases.update_client(booking, client_id, body))

    # -- availability and sessions ----------------------------------------------------
    @router.get("/availability", response_model=list[SlotOut], tags=["sessions"])
    async def availability(
        caller: Caller,
        service_id: str,
        location_id: str,
        start: Instant,
        end: Instant,
        therapist_id: str | None = None,
    ) -> Response:
        caller.require_location(location_id)
        slots = await usecases.availability(
            booking,
            service_id=service_id,
            location_id=location_id,
            start=_aware(start, "start"),
            end=_aware(end, "end"),
            therapist_id=therapist_id,
        )
        # Hundreds of slots per answer: serialize the domain's dataclasses in one pass
        # instead of building and re-validating a model per slot.
        return Response(SLOTS_JSON.dump_json(slots), media_type="application/json")

    @router.post("/sessions", status_code=201, response_model=SessionOut, tags=["sessions"])
    async def book(
        body: SessionIn,
        caller: Caller,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Any:
        caller.require_location(body.location_id)
        if idempotency_key is not None:
            replay = await usecases.replay_idempotent(booking, idempotency_key, body)
            if replay is not None:
                return JSONResponse(replay[1], status_code=replay[0])
        return await usecases.book(
            booking,
            body,
            idempotency_key,
            render=lambda row: session_out(row).model_dump(mode="json"),
        )

    @router.get("/sessions", response_model=list[SessionOut], tags=["sessions"])
    async def list_sessions(
        caller: Caller,
        location_id: str | None = None,
        therapist_id: str | None = None,
        client_id: str | None = None,
        start: Instant | None = None,
        end: Instant | None = None,
        status: str | None = None,
        limit: int = Query(500, ge=1, le=2000),
    ) -> list[SessionOut]:
        if not caller.is_admin:
            caller.require_role("front_desk")
        rows = await usecases.list_sessions(
            booking,
            location_id=location_id,
            therapist_id=therapist_id,
            client_id=client_id,
            start=_aware(start, "start") if start else None,
            end=_aware(end, "end") if end else None,
            status=status,
            limit=limit,
        )
        return [
            session_out(r) for r in rows if caller.is_admin or r.location_id in caller.location_ids
        ]

    async def _own_session(session_id: str, caller: Principal) -> None:
        if not caller.is_admin:
            row = await usecases.get_session(booking, session_id)
            caller.require_location(row.location_id)

    @router.get("/sessions/{session_id}", response_model=SessionOut, tags=["sessions"])
    async def get_session(session_id: str, caller: Caller) -> SessionOut:
        await _own_session(session_id, caller)
        return session_out(await usecases.get_session(booking, session_id))

    @router.post("/sessions/{session_id}/reschedule", response_model=SessionOut, tags=["sessions"])
    async def reschedule(session_id: str, body: RescheduleIn, caller: Caller) -> SessionOut:
        await _own_session(session_id, caller)
        return session_out(
            await usecases.reschedule(booking, session_id, body.start, body.therapist_id)
        )

    @router.post("/sessions/{session_id}/cancel", response_model=SessionOut, tags=["sessions"])
    async def cancel(session_id: str, body: CancelIn, caller: Caller) -> SessionOut:
        await _own_session(session_id, caller)
        return session_out(await usecases.cancel(booking, session_id, body.reason))

    @router.post("/sessions/{session_id}/check-in", response_model=SessionOut, tags=["sessions"])
    async def check_in(session_id: str, caller: Caller) -> SessionOut:
        await _own_session(session_id, caller)
        return session_out(await usecases.check_in(booking, session_id))

    @router.post("/sessions/{session_id}/complete", response_model=SessionOut, tags=["sessions"])
    async def complete(session_id: str, caller: Caller) -> SessionOut:
        await _own_session(session_id, caller)
        return session_out(await usecases.complete(booking, session_id))

    @router.post("/sessions/{session_id}/no-show", response_model=SessionOut, tags=["sessions"])
    async def no_show(session_id: str, caller: Caller) -> SessionOut:
        await _own_session(session_id, caller)
        return session_out(await usecases.no_show(booking, session_id))

    # -- calendars (token in the URL, no API key: calendar apps cannot send headers) ----
    @router.get("/calendars/therapists/{therapist_id}.ics", tags=["calendars"])
    async def therapist_calendar(therapist_id: str, token: str) -> Response:
        body = await usecases.therapist_feed(booking, therapist_id, token)
        return Response(body, media_type="text/calendar; charset=utf-8")

    @router.get("/calendars/locations/{location_id}.ics", tags=["calendars"])
    async def location_calendar(location_id: str, token: str) -> Response:
        body = await usecases.location_feed(booking, location_id, token)
        return Response(body, media_type="text/calendar; charset=utf-8")

    # -- calendar links (CalDAV push and pull, ICS pull): admin only ------------------
    if calendar is not None:
        sync = calendar

        @router.post(
            "/calendar-links", status_code=201, response_model=CalendarLinkOut, tags=["calendars"]
        )
        async def create_calendar_link(body: CalendarLinkIn, caller: Caller) -> CalendarLinkOut:
            admin(caller)
            return calendar_link_out(await sync.create_link(body))

        @router.get("/calendar-links", response_model=list[CalendarLinkOut], tags=["calendars"])
        async def list_calendar_links(caller: Caller) -> list[CalendarLinkOut]:
            admin(caller)
            return [calendar_link_out(v) for v in await sync.list_links()]

        @router.get("/calendar-links/{link_id}", response_model=CalendarLinkOut, tags=["calendars"])
        async def get_calendar_link(link_id: str, caller: Caller) -> CalendarLinkOut:
            admin(caller)
            return calendar_link_out(await sync.get_link(link_id))

        @router.delete("/calendar-links/{link_id}", status_code=204, tags=["calendars"])
        async def delete_calendar_link(link_id: str, caller: Caller) -> Response:
            admin(caller)
            await sync.delete_link(link_id)
            return Response(status_code=204)

    # -- API keys ---------------------------------------------------------------------
    @router.post("/api-keys", status_code=201, response_model=ApiKeyOut, tags=["auth"])
    async def issue_key(body: ApiKeyIn, caller: Caller) -> ApiKeyOut:
        admin(caller)
        key_id, key = await usecases.issue_api_key(booking, body.name, body.role, body.location_ids)
        return ApiKeyOut(
            id=key_id, name=body.name, role=body.role, location_ids=body.location_ids, api_key=key
        )

    return router


def _aware(moment: datetime, name: str) -> datetime:
    try:
        return as_utc(moment)
    except ValueError as exc:
        raise usecases.InvalidRequest(f"{name}: {exc}") from exc
