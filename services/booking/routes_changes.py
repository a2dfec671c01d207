"""HTTP routes for changing the clinic after set-up: PATCH of locations, rooms, services and
therapists, versions of working hours, time off corrected or withdrawn, closures.

``install`` wires them (and the client's page, ``manage.py``) into booking's app.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Response

from services.booking import api, changes
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
from services.booking.manage import ManageLinks
from services.booking.routes_manage import build_manage_router
from services.booking.schemas import LocationOut, RoomOut, TherapistOut, TreatmentOut
from services.booking.settings import BookingSettings
from services.booking.usecases import Booking
from shared.auth import Principal
from shared.errors import install_error_handlers


def build_changes_router(booking: Booking, authenticate: Any, base_url: str) -> APIRouter:
    router = APIRouter(prefix="/v1")
    Caller = Annotated[Principal, Depends(authenticate)]

    @router.patch("/locations/{location_id}", response_model=LocationOut, tags=["locations"])
    async def patch_location(location_id: str, body: LocationPatch, caller: Caller) -> LocationOut:
        caller.require_role("admin")
        row = await changes.patch_location(booking, location_id, body)
        return api.location_out(row, base_url)

    @router.patch(
        "/locations/{location_id}/rooms/{room_id}", response_model=RoomOut, tags=["locations"]
    )
    async def patch_room(
        location_id: str, room_id: str, body: RoomPatch, caller: Caller
    ) -> RoomOut:
        caller.require_role("admin")
        room = await changes.patch_room(booking, location_id, room_id, body)
        return RoomOut.model_validate(room, from_attributes=True)

    @router.patch("/services/{service_id}", response_model=TreatmentOut, tags=["services"])
    async def patch_service(service_id: str, body: ServicePatch, caller: Caller) -> TreatmentOut:
        caller.require_role("admin")
        return api.treatment_out(await changes.patch_service(booking, service_id, body))

    @router.patch("/therapists/{therapist_id}", response_model=TherapistOut, tags=["therapists"])
    async def patch_therapist(
        therapist_id: str, body: TherapistPatch, caller: Caller
    ) -> TherapistOut:
        caller.require_role("admin")
        row = await changes.patch_therapist(booking, therapist_id, body)
        return api.therapist_out(row, base_url)

    # -- working hours as versions -------------------------------------------------------
    @router.put(
        "/therapists/{therapist_id}/working-hours",
        response_model=WorkingWeekOut,
        tags=["therapists"],
    )
    async def put_working_hours(
        therapist_id: str, body: WorkingWeekIn, caller: Caller
    ) -> WorkingWeekOut:
        caller.require_role("admin")
        _row, clashes = await changes.put_working_week(booking, therapist_id, body)
        return WorkingWeekOut(
            effective_from=body.effective_from,
            working_hours=body.working_hours,
            conflicts=[changes.conflict_out(s) for s in clashes],
        )

    @router.get(
        "/therapists/{therapist_id}/working-hours",
        response_model=WorkingWeeksOut,
        tags=["therapists"],
    )
    async def list_working_hours(therapist_id: str, _caller: Caller) -> WorkingWeeksOut:
        versions = await changes.working_weeks(booking, therapist_id)
        return WorkingWeeksOut(
            therapist_id=therapist_id,
            versions=[
                WorkingWeekOut(
                    effective_from=since, working_hours=[changes._hours_out(h) for h in rows]
                )
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
        therapist_id: str, time_off_id: str, body: TimeOffPatch, caller: Caller
    ) -> TimeOffChangeOut:
        caller.require_role("admin", "front_desk")
        entry, clashes = await changes.patch_time_off(booking, therapist_id, time_off_id, body)
        return TimeOffChangeOut(
            id=entry.id,
            therapist_id=therapist_id,
            start=entry.start_at,
            end=entry.end_at,
            reason=entry.reason,
            conflicts=[changes.conflict_out(s) for s in clashes],
        )

    @router.delete(
        "/therapists/{therapist_id}/time-off/{time_off_id}", status_code=204, tags=["therapists"]
    )
    async def delete_time_off(therapist_id: str, time_off_id: str, caller: Caller) -> Response:
        caller.require_role("admin", "front_desk")
        await changes.delete_time_off(booking, therapist_id, time_off_id)
        return Response(status_code=204)

    # -- closures ------------------------------------------------------------------------
    @router.post(
        "/locations/{location_id}/closures",
        status_code=201,
        response_model=ClosureOut,
        tags=["locations"],
    )
    async def add_closure(location_id: str, body: ClosureIn, caller: Caller) -> ClosureOut:
        caller.require_location(location_id)
        closure, clashes = await changes.add_closure(booking, location_id, body)
        return ClosureOut(
            id=closure.id,
            location_id=location_id,
            start=closure.start_at,
            end=closure.end_at,
            reason=closure.reason,
            conflicts=[changes.conflict_out(s) for s in clashes],
        )

    @router.get(
        "/locations/{location_id}/closures", response_model=list[ClosureOut], tags=["locations"]
    )
    async def list_closures(location_id: str, caller: Caller) -> list[ClosureOut]:
        caller.require_location(location_id)
        return [
            ClosureOut(
                id=c.id, location_id=location_id, start=c.start_at, end=c.end_at, reason=c.reason
            )
            for c in await changes.list_closures(booking, location_id)
        ]

    @router.delete(
        "/locations/{location_id}/closures/{closure_id}", status_code=204, tags=["locations"]
    )
    async def delete_closure(location_id: str, closure_id: str, caller: Caller) -> Response:
        caller.require_location(location_id)
        await changes.delete_closure(booking, location_id, closure_id)
        return Response(status_code=204)

    return router


def install(
    app: FastAPI,
    booking: Booking,
    authenticate: Any,
    settings: BookingSettings,
    links: ManageLinks,
) -> None:
    """Add the routes of this module and the client's page to booking's app."""
    install_error_handlers(app)
    app.state.manage_links = links
    app.include_router(build_changes_router(booking, authenticate, settings.base_url))
    app.include_router(build_manage_router(booking, links))
