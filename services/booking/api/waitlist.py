"""The waitlist, for the front desk and admins (``services.booking.waitlist``)."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, Response

from services.booking import db
from services.booking.api.common import ApiContext
from services.booking.waitlist import entries
from services.booking.waitlist.schemas import WaitlistEntryIn, WaitlistEntryOut
from shared.auth import Scope
from shared.pagination import Paged, finish


def entry_out(row: db.WaitlistEntry) -> WaitlistEntryOut:
    return WaitlistEntryOut(
        id=row.id,
        client_id=row.client_id,
        service_id=row.treatment_id,
        location_id=row.location_id,
        therapist_id=row.therapist_id,
        earliest=row.earliest,
        latest=row.latest,
        times_of_day=list(row.times_of_day or ()),
        status=row.status,
        session_id=row.session_id,
        created_at=row.created_at,
        ended_at=row.ended_at,
    )


def router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    booking = ctx.booking
    Scoped = Annotated[Scope, Depends(ctx.scope)]

    @router.post("/waitlist", status_code=201, response_model=WaitlistEntryOut, tags=["waitlist"])
    async def add_entry(body: WaitlistEntryIn, scope: Scoped) -> WaitlistEntryOut:
        return entry_out(await entries.add_entry(booking, body, scope=scope))

    @router.get("/waitlist", response_model=list[WaitlistEntryOut], tags=["waitlist"])
    async def list_entries(
        scope: Scoped,
        request: Request,
        response: Response,
        page: Paged,
        location_id: str | None = None,
        status: Literal["waiting", "filled", "removed"] | None = None,
    ) -> list[WaitlistEntryOut]:
        rows = await entries.list_entries(
            booking, location_id=location_id, status=status, page=page, scope=scope
        )
        rows = finish(rows, page, entries.entry_key, request, response)
        return [entry_out(r) for r in rows]

    @router.get("/waitlist/{entry_id}", response_model=WaitlistEntryOut, tags=["waitlist"])
    async def get_entry(entry_id: str, scope: Scoped) -> WaitlistEntryOut:
        return entry_out(await entries.get_entry(booking, entry_id, scope=scope))

    @router.delete("/waitlist/{entry_id}", status_code=204, tags=["waitlist"])
    async def remove_entry(entry_id: str, scope: Scoped) -> Response:
        await entries.remove_entry(booking, entry_id, scope=scope)
        return Response(status_code=204)

    return router
