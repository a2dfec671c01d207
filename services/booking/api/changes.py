"""Changing the clinic after set-up: PATCH of locations, rooms, services and therapists,
working hours as versions, time off corrected or withdrawn, closures. Hours, time off and
closures answer with ``conflicts``: booked sessions they now overlap, left booked."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from services.booking import hours, queries
from services.booking.api.common import (
    ApiContext,
    admin,
    conflict_out,
    hours_out,
    location_out,
    therapist_out,
    treatment_out,
)
from services.booking.change_schemas import (
    ClosureIn,
    ClosureOut,
    LocationPatch,
    RoomPatch,
    ServicePatch,
    TherapistPatch,
    TimeOffChangeOut,
    TimeOffPatch,
    WorkingWeekIn,
    WorkingWeekOut,
    WorkingWeeksOut,
)
from services.booking.schemas import LocationOut, RoomOut, TherapistOut, TreatmentOut
from services.booking.usecases import changes, schedule
from shared.auth import Principal, Scope
from shared.pagination import Paged, finish


def router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    booking = ctx.booking
    base_url = ctx.base_url
    Caller = Annotated[Principal, Depends(ctx.authenticate)]
    Scoped = Annotated[Scope, Depends(ctx.scope)]

    async def reach_therapist(therapist_id: str, scope: Scope) -> None:
        """404 for a therapist who works at none of the caller's locations."""
        await queries.get_therapist(booking, therapist_id, scope=scope)

    async def reach_location(location_id: str, scope: Scope) -> None:
        await queries.get_location(booking, location_id, scope=scope)

    # -- locations, rooms, services, therapists ----------------------------------------
    @router.patch("/locations/{location_id}", response_model=LocationOut, tags=["locations"])
    async def patch_location(location_id: str, body: LocationPatch, caller: Caller) -> LocationOut:
        admin(caller)
        row = await changes.patch_location(booking, location_id, body)
        return location_out(row, base_url)

    @router.patch(
        "/locations/{location_id}/rooms/{room_id}", response_model=RoomOut, tags=["locations"]
    )
    async def patch_room(
        location_id: str, room_id: str, body: RoomPatch, caller: Caller
    ) -> RoomOut:
        admin(caller)
        room = await changes.patch_room(booking, location_id, room_id, body)
        return RoomOut.model_validate(room, from_attributes=True)

    @router.patch("/services/{service_id}", response_model=TreatmentOut, tags=["services"])
    async def patch_service(service_id: str, body: ServicePatch, caller: Caller) -> TreatmentOut:
        admin(caller)
        return treatment_out(await changes.patch_service(booking, service_id, body))

    @router.patch("/therapists/{therapist_id}", response_model=TherapistOut, tags=["therapists"])
    async def patch_therapist(
        therapist_id: str, body: TherapistPatch, caller: Caller
    ) -> TherapistOut:
        admin(caller)
        row = await changes.patch_therapist(booking, therapist_id, body)
        return therapist_out(row, base_url, Scope(None))

    # -- working hours as versions -------------------------------------------------------
    @router.put(
        "/therapists/{therapist_id}/working-hours",
        response_model=WorkingWeekOut,
        tags=["therapists"],
    )
    async def put_working_hours(
        therapist_id: str, body: WorkingWeekIn, caller: Caller
    ) -> WorkingWeekOut:
        admin(caller)
        _row, clashes = await schedule.put_working_week(booking, therapist_id, body)
        return WorkingWeekOut(
            effective_from=body.effective_from,
            working_hours=body.working_hours,
            conflicts=[conflict_out(s) for s in clashes],
        )

    @router.get(
        "/therapists/{therapist_id}/working-hours",
        response_model=WorkingWeeksOut,
        tags=["therapists"],
    )
    async def list_working_hours(therapist_id: str, scope: Scoped) -> WorkingWeeksOut:
        await reach_therapist(therapist_id, scope)
        versions = await hours.working_weeks(booking, therapist_id)
        return WorkingWeeksOut(
            therapist_id=therapist_id,
            versions=[
                WorkingWeekOut(effective_from=since, working_hours=[hours_out(h) for h in rows])
                for since, rows in versions
            ],
        )

    # -- time off ------------------------------------------------------------------------
    @router.patch(
        "/therapists/{therapist_id}/time-off/{time_off_id}",
        response_model=TimeOffChangeOut,
        tags=["therapists"],
    )
    async def patch_time_off(
        therapist_id: str, time_off_id: str, body: TimeOffPatch, scope: Scoped
    ) -> TimeOffChangeOut:
        await reach_therapist(therapist_id, scope)
        entry, clashes = await schedule.patch_time_off(booking, therapist_id, time_off_id, body)
        return TimeOffChangeOut(
            id=entry.id,
            therapist_id=therapist_id,
            start=entry.start_at,
            end=entry.end_at,
            reason=entry.reason,
            conflicts=[conflict_out(s) for s in clashes],
        )

    @router.delete(
        "/therapists/{therapist_id}/time-off/{time_off_id}", status_code=204, tags=["therapists"]
    )
    async def delete_time_off(therapist_id: str, time_off_id: str, scope: Scoped) -> Response:
        await reach_therapist(therapist_id, scope)
        await schedule.delete_time_off(booking, therapist_id, time_off_id)
        return Response(status_code=204)

    # -- closures ------------------------------------------------------------------------
    @router.post(
        "/locations/{location_id}/closures",
        status_code=201,
        response_model=ClosureOut,
        tags=["locations"],
    )
    async def add_closure(location_id: str, body: ClosureIn, scope: Scoped) -> ClosureOut:
        await reach_location(location_id, scope)
        closure, clashes = await schedule.add_closure(booking, location_id, body)
        return ClosureOut(
            id=closure.id,
            location_id=location_id,
            start=closure.start_at,
            end=closure.end_at,
            reason=closure.reason,
            conflicts=[conflict_out(s) for s in clashes],
        )

    @router.get(
        "/locations/{location_id}/closures", response_model=list[ClosureOut], tags=["locations"]
    )
    async def list_closures(
        location_id: str, scope: Scoped, page: Paged, request: Request, response: Response
    ) -> list[ClosureOut]:
        await reach_location(location_id, scope)
        rows = await hours.list_closures(booking, location_id, page=page)
        return [
            ClosureOut(
                id=c.id, location_id=location_id, start=c.start_at, end=c.end_at, reason=c.reason
            )
            for c in finish(rows, page, queries.span_key, request, response)
        ]

    @router.delete(
        "/locations/{location_id}/closures/{closure_id}", status_code=204, tags=["locations"]
    )
    async def delete_closure(location_id: str, closure_id: str, scope: Scoped) -> Response:
        await reach_location(location_id, scope)
        await schedule.delete_closure(booking, location_id, closure_id)
        return Response(status_code=204)

    return router
