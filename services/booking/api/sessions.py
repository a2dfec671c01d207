"""Availability, booking, and every change of a session."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter

from services.booking import domain, queries
from services.booking.api.common import ApiContext, aware, session_out
from services.booking.schemas import CancelIn, RescheduleIn, SessionIn, SessionOut, SlotOut
from services.booking.usecases import sessions
from shared.auth import Principal
from shared.validation import Instant

SLOTS_JSON = TypeAdapter(list[domain.Slot])


def router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    booking = ctx.booking
    Caller = Annotated[Principal, Depends(ctx.authenticate)]

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
        slots = await queries.availability(
            booking,
            service_id=service_id,
            location_id=location_id,
            start=aware(start, "start"),
            end=aware(end, "end"),
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
            replay = await sessions.replay_idempotent(booking, idempotency_key, body)
            if replay is not None:
                return JSONResponse(replay[1], status_code=replay[0])
        return await sessions.book(
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
        rows = await queries.list_sessions(
            booking,
            location_id=location_id,
            therapist_id=therapist_id,
            client_id=client_id,
            start=aware(start, "start") if start else None,
            end=aware(end, "end") if end else None,
            status=status,
            limit=limit,
        )
        return [
            session_out(r) for r in rows if caller.is_admin or r.location_id in caller.location_ids
        ]

    async def _own_session(session_id: str, caller: Principal) -> None:
        if not caller.is_admin:
            row = await queries.get_session(booking, session_id)
            caller.require_location(row.location_id)

    @router.get("/sessions/{session_id}", response_model=SessionOut, tags=["sessions"])
    async def get_session(session_id: str, caller: Caller) -> SessionOut:
        await _own_session(session_id, caller)
        return session_out(await queries.get_session(booking, session_id))

    @router.post("/sessions/{session_id}/reschedule", response_model=SessionOut, tags=["sessions"])
    async def reschedule(session_id: str, body: RescheduleIn, caller: Caller) -> SessionOut:
        await _own_session(session_id, caller)
        return session_out(
            await sessions.reschedule(booking, session_id, body.start, body.therapist_id)
        )

    @router.post("/sessions/{session_id}/cancel", response_model=SessionOut, tags=["sessions"])
    async def cancel(session_id: str, body: CancelIn, caller: Caller) -> SessionOut:
        await _own_session(session_id, caller)
        return session_out(await sessions.cancel(booking, session_id, body.reason))

    @router.post("/sessions/{session_id}/check-in", response_model=SessionOut, tags=["sessions"])
    async def check_in(session_id: str, caller: Caller) -> SessionOut:
        await _own_session(session_id, caller)
        return session_out(await sessions.check_in(booking, session_id))

    @router.post("/sessions/{session_id}/complete", response_model=SessionOut, tags=["sessions"])
    async def complete(session_id: str, caller: Caller) -> SessionOut:
        await _own_session(session_id, caller)
        return session_out(await sessions.complete(booking, session_id))

    @router.post("/sessions/{session_id}/no-show", response_model=SessionOut, tags=["sessions"])
    async def no_show(session_id: str, caller: Caller) -> SessionOut:
        await _own_session(session_id, caller)
        return session_out(await sessions.no_show(booking, session_id))

    return router
