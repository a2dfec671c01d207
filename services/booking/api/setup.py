"""Locations and rooms, treatments ("services" in the contract), therapists and their time off."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from services.booking import db, queries
from services.booking.api.common import (
    ApiContext,
    admin,
    conflict_out,
    location_out,
    therapist_out,
    treatment_out,
)
from services.booking.schemas import (
    LocationIn,
    LocationOut,
    RoomIn,
    RoomOut,
    TherapistIn,
    TherapistOut,
    TimeOffIn,
    TimeOffOut,
    TreatmentIn,
    TreatmentOut,
)
from services.booking.usecases import setup
from shared.auth import Principal, Scope
from shared.pagination import Paged, finish


def router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    booking = ctx.booking
    base_url = ctx.base_url
    Caller = Annotated[Principal, Depends(ctx.authenticate)]
    Scoped = Annotated[Scope, Depends(ctx.scope)]

    # -- locations and rooms ---------------------------------------------------------
    @router.post("/locations", status_code=201, response_model=LocationOut, tags=["locations"])
    async def create_location(body: LocationIn, caller: Caller) -> LocationOut:
        admin(caller)
        return location_out(await setup.create_location(booking, body), base_url)

    @router.get("/locations", response_model=list[LocationOut], tags=["locations"])
    async def list_locations(
        scope: Scoped, page: Paged, request: Request, response: Response
    ) -> list[LocationOut]:
        rows = await queries.list_locations(booking, page=page, scope=scope)
        rows = finish(rows, page, queries.name_key, request, response)
        return [location_out(r, base_url) for r in rows]

    @router.get("/locations/{location_id}", response_model=LocationOut, tags=["locations"])
    async def get_location(location_id: str, scope: Scoped) -> LocationOut:
        return location_out(await queries.get_location(booking, location_id, scope=scope), base_url)

    @router.post(
        "/locations/{location_id}/rooms",
        status_code=201,
        response_model=RoomOut,
        tags=["locations"],
    )
    async def add_room(location_id: str, body: RoomIn, caller: Caller) -> RoomOut:
        admin(caller)
        room = await setup.add_room(booking, location_id, body.name)
        return RoomOut.model_validate(room, from_attributes=True)

    @router.get("/locations/{location_id}/rooms", response_model=list[RoomOut], tags=["locations"])
    async def list_rooms(
        location_id: str, scope: Scoped, page: Paged, request: Request, response: Response
    ) -> list[RoomOut]:
        rows = await queries.list_rooms(booking, location_id, page=page, scope=scope)
        rows = finish(rows, page, queries.name_key, request, response)
        return [RoomOut.model_validate(r, from_attributes=True) for r in rows]

    @router.post("/locations/{location_id}/ics-token", tags=["calendars"])
    async def new_location_token(location_id: str, caller: Caller) -> dict[str, str]:
        admin(caller)
        token = await setup.new_ics_token(booking, db.Location, location_id)
        return {"ics_url": f"{base_url}/v1/calendars/locations/{location_id}.ics?token={token}"}

    # -- treatments ("services" in the contract) -------------------------------------
    @router.post("/services", status_code=201, response_model=TreatmentOut, tags=["services"])
    async def create_service(body: TreatmentIn, caller: Caller) -> TreatmentOut:
        admin(caller)
        return treatment_out(await setup.create_treatment(booking, body))

    @router.get("/services", response_model=list[TreatmentOut], tags=["services"])
    async def list_services(
        _caller: Caller, page: Paged, request: Request, response: Response
    ) -> list[TreatmentOut]:
        rows = await queries.list_treatments(booking, page=page)
        return [treatment_out(r) for r in finish(rows, page, queries.name_key, request, response)]

    @router.get("/services/{service_id}", response_model=TreatmentOut, tags=["services"])
    async def get_service(service_id: str, _caller: Caller) -> TreatmentOut:
        return treatment_out(await queries.get_treatment(booking, service_id))

    # -- therapists -------------------------------------------------------------------
    @router.post(
        "/therapists",
        status_code=201,
        response_model=TherapistOut,
        response_model_exclude_none=True,
        tags=["therapists"],
    )
    async def create_therapist(body: TherapistIn, scope: Scoped, caller: Caller) -> TherapistOut:
        admin(caller)
        row = await setup.create_therapist(booking, body)
        return therapist_out(
            await queries.get_therapist(booking, row.id, scope=scope), base_url, scope
        )

    @router.get(
        "/therapists",
        response_model=list[TherapistOut],
        response_model_exclude_none=True,
        tags=["therapists"],
    )
    async def list_therapists(
        scope: Scoped,
        page: Paged,
        request: Request,
        response: Response,
        location_id: str | None = None,
    ) -> list[TherapistOut]:
        rows = await queries.list_therapists(booking, location_id, page=page, scope=scope)
        rows = finish(rows, page, queries.name_key, request, response)
        return [therapist_out(r, base_url, scope) for r in rows]

    @router.get(
        "/therapists/{therapist_id}",
        response_model=TherapistOut,
        response_model_exclude_none=True,
        tags=["therapists"],
    )
    async def get_therapist(therapist_id: str, scope: Scoped) -> TherapistOut:
        row = await queries.get_therapist(booking, therapist_id, scope=scope)
        return therapist_out(row, base_url, scope)

    @router.post("/therapists/{therapist_id}/ics-token", tags=["calendars"])
    async def new_therapist_token(therapist_id: str, caller: Caller) -> dict[str, str]:
        admin(caller)
        token = await setup.new_ics_token(booking, db.Therapist, therapist_id)
        return {"ics_url": f"{base_url}/v1/calendars/therapists/{therapist_id}.ics?token={token}"}

    @router.post(
        "/therapists/{therapist_id}/time-off",
        status_code=201,
        response_model=TimeOffOut,
        tags=["therapists"],
    )
    async def add_time_off(therapist_id: str, body: TimeOffIn, scope: Scoped) -> TimeOffOut:
        entry, clashes = await setup.add_time_off(booking, therapist_id, body, scope=scope)
        return TimeOffOut(
            id=entry.id,
            therapist_id=therapist_id,
            start=entry.start_at,
            end=entry.end_at,
            reason=entry.reason,
            conflicts=[conflict_out(s) for s in clashes],
            conflicting_session_ids=[s.id for s in clashes],
        )

    @router.get(
        "/therapists/{therapist_id}/time-off", response_model=list[TimeOffOut], tags=["therapists"]
    )
    async def list_time_off(
        therapist_id: str, scope: Scoped, page: Paged, request: Request, response: Response
    ) -> list[TimeOffOut]:
        rows = await queries.list_time_off(booking, therapist_id, page=page, scope=scope)
        return [
            TimeOffOut(
                id=t.id, therapist_id=therapist_id, start=t.start_at, end=t.end_at, reason=t.reason
            )
            for t in finish(rows, page, queries.span_key, request, response)
        ]

    return router
