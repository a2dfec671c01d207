"""Availability, booking, and every change of a session."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse

from services.booking import db, queries
from services.booking.api.common import ApiContext, aware, session_out
from services.booking.availability import search_json
from services.booking.schemas import CancelIn, RescheduleIn, SessionIn, SessionOut, SlotOut
from services.booking.usecases import sessions
from shared.auth import Scope
from shared.pagination import Paged, finish
from shared.validation import Instant


def router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    booking = ctx.booking
    Scoped = Annotated[Scope, Depends(ctx.scope)]

    def out(row: db.Session) -> SessionOut:
        """Every session answer carries the client's page for it."""
        return session_out(row, booking.manage_url(row.id))

    # -- availability and sessions ----------------------------------------------------
    @router.get("/availability", response_model=list[SlotOut], tags=["sessions"])
    async def availability(
        scope: Scoped,
        service_id: str,
        location_id: str,
        start: Instant,
        end: Instant,
        therapist_id: str | None = None,
    ) -> Response:
        body = await search_json(
            booking,
            service_id=service_id,
            location_id=location_id,
            start=aware(start, "start"),
            end=aware(end, "end"),
            therapist_id=therapist_id,
            scope=scope,
        )
        # Hundreds of slots per answer: written straight from the search's integers.
        return Response(body, media_type="application/json")

    @router.post("/sessions", status_code=201, response_model=SessionOut, tags=["sessions"])
    async def book(
        body: SessionIn,
        scope: Scoped,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Any:
        if idempotency_key is not None:
            replay = await sessions.replay_idempotent(booking, idempotency_key, body)
            if replay is not None:
                scope.require(body.location_id)
                return JSONResponse(replay[1], status_code=replay[0])
        return await sessions.book(
            booking,
            body,
            idempotency_key,
            render=lambda row: out(row).model_dump(mode="json"),
            scope=scope,
        )

    @router.get("/sessions", response_model=list[SessionOut], tags=["sessions"])
    async def list_sessions(
        scope: Scoped,
        request: Request,
        response: Response,
        page: Paged,
        location_id: str | None = None,
        therapist_id: str | None = None,
        client_id: str | None = None,
        start: Instant | None = None,
        end: Instant | None = None,
        status: str | None = None,
    ) -> list[SessionOut]:
        rows = await queries.list_sessions(
            booking,
            location_id=location_id,
            therapist_id=therapist_id,
            client_id=client_id,
            start=aware(start, "start") if start else None,
            end=aware(end, "end") if end else None,
            status=status,
            page=page,
            scope=scope,
        )
        return [out(r) for r in finish(rows, page, queries.session_key, request, response)]

    @router.get("/sessions/{session_id}", response_model=SessionOut, tags=["sessions"])
    async def get_session(session_id: str, scope: Scoped) -> SessionOut:
        return out(await queries.get_session(booking, session_id, scope=scope))

    @router.post("/sessions/{session_id}/reschedule", response_model=SessionOut, tags=["sessions"])
    async def reschedule(session_id: str, body: RescheduleIn, scope: Scoped) -> SessionOut:
        return out(
            await sessions.reschedule(
                booking, session_id, body.start, body.therapist_id, body.location_id, scope=scope
            )
        )

    @router.post("/sessions/{session_id}/cancel", response_model=SessionOut, tags=["sessions"])
    async def cancel(session_id: str, body: CancelIn, scope: Scoped) -> SessionOut:
        return out(await sessions.cancel(booking, session_id, body.reason, scope=scope))

    @router.post("/sessions/{session_id}/check-in", response_model=SessionOut, tags=["sessions"])
    async def check_in(session_id: str, scope: Scoped) -> SessionOut:
        return out(await sessions.check_in(booking, session_id, scope=scope))

    @router.post("/sessions/{session_id}/complete", response_model=SessionOut, tags=["sessions"])
    async def complete(session_id: str, scope: Scoped) -> SessionOut:
        return out(await sessions.complete(booking, session_id, scope=scope))

    @router.post("/sessions/{session_id}/no-show", response_model=SessionOut, tags=["sessions"])
    async def no_show(session_id: str, scope: Scoped) -> SessionOut:
        return out(await sessions.no_show(booking, session_id, scope=scope))

    return router
