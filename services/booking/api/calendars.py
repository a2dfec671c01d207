"""Calendars: the ICS feeds (token in the URL, no API key: calendar apps cannot send
headers) and the links to outside calendars (admin only)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from services.booking import queries
from services.booking.api.common import ApiContext, admin, calendar_link_out
from services.booking.calendar.links import link_key
from services.booking.schemas import CalendarLinkIn, CalendarLinkOut
from shared.auth import Principal
from shared.pagination import Paged, finish


def router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    booking = ctx.booking
    Caller = Annotated[Principal, Depends(ctx.authenticate)]
    links = ctx.calendar_links

    # -- calendars (token in the URL, no API key: calendar apps cannot send headers) ----
    @router.get("/calendars/therapists/{therapist_id}.ics", tags=["calendars"])
    async def therapist_calendar(therapist_id: str, token: str) -> Response:
        body = await queries.therapist_feed(booking, therapist_id, token)
        return Response(body, media_type="text/calendar; charset=utf-8")

    @router.get("/calendars/locations/{location_id}.ics", tags=["calendars"])
    async def location_calendar(location_id: str, token: str) -> Response:
        body = await queries.location_feed(booking, location_id, token)
        return Response(body, media_type="text/calendar; charset=utf-8")

    # -- calendar links (CalDAV push and pull, ICS pull) -----------------------------
    @router.post(
        "/calendar-links", status_code=201, response_model=CalendarLinkOut, tags=["calendars"]
    )
    async def create_calendar_link(body: CalendarLinkIn, caller: Caller) -> CalendarLinkOut:
        admin(caller)
        return calendar_link_out(await links.create_link(body))

    @router.get("/calendar-links", response_model=list[CalendarLinkOut], tags=["calendars"])
    async def list_calendar_links(
        caller: Caller, page: Paged, request: Request, response: Response
    ) -> list[CalendarLinkOut]:
        admin(caller)
        views = finish(await links.list_links(page), page, link_key, request, response)
        return [calendar_link_out(v) for v in views]

    @router.get("/calendar-links/{link_id}", response_model=CalendarLinkOut, tags=["calendars"])
    async def get_calendar_link(link_id: str, caller: Caller) -> CalendarLinkOut:
        admin(caller)
        return calendar_link_out(await links.get_link(link_id))

    @router.delete("/calendar-links/{link_id}", status_code=204, tags=["calendars"])
    async def delete_calendar_link(link_id: str, caller: Caller) -> Response:
        admin(caller)
        await links.delete_link(link_id)
        return Response(status_code=204)

    return router
