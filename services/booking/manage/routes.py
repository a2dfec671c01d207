"""HTTP routes of the client's page: ``/m/{token}``, no API key, not in the OpenAPI."""

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from services.booking import db, queries
from services.booking.manage import actions, page
from services.booking.manage.links import ManageLinks, is_open, origin_of, read_form, same_site
from services.booking.usecases import Booking
from shared.auth import EVERYTHING
from shared.errors import NotFound


def router(booking: Booking, links: ManageLinks) -> APIRouter:
    router = APIRouter(prefix="/m", include_in_schema=False)
    css_url = "/m/static/manage.css"
    own_origins = {origin_of(links.base_url)}

    def answer(title: str, body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(
            page.page(title, body, css_url), status_code=status, headers=page.HEADERS
        )

    def not_found() -> HTMLResponse:
        return answer("Link not valid", page.gone_page(), 404)

    async def load(token: str) -> db.Session | None:
        session_id = links.session_id(token)
        if session_id is None:
            return None
        try:
            row = await queries.get_session(booking, session_id, scope=EVERYTHING)
        except NotFound:
            return None
        return row if is_open(row, booking.clock()) else None

    def view(row: db.Session, token: str) -> page.View:
        return page.View(row, token, links.form_token(row), booking.clock())

    @router.get("/static/manage.css")
    async def stylesheet() -> Response:
        return Response(
            page.CSS,
            media_type="text/css",
            headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    @router.get("/{token}", response_class=HTMLResponse)
    async def show(token: str, done: str | None = None) -> HTMLResponse:
        row = await load(token)
        if row is None:
            return not_found()
        body = page.session_page(view(row, token), message=page.DONE_TEXT.get(done or ""))
        return answer("Your appointment", body)

    @router.get("/{token}/reschedule", response_class=HTMLResponse)
    async def times(token: str) -> HTMLResponse:
        row = await load(token)
        if row is None:
            return not_found()
        current = view(row, token)
        if not current.actionable:
            body = page.session_page(
                current, message="This appointment can no longer be moved here.", problem=True
            )
            return answer("Your appointment", body, 409)
        slots = await actions.free_times(booking, row)
        return answer("Reschedule", page.reschedule_page(current, slots))

    @router.post("/{token}/{action}", response_class=HTMLResponse)
    async def act(token: str, action: str, request: Request) -> Response:
        if action not in {"confirm", "cancel", "reschedule"}:
            return not_found()
        row = await load(token)
        if row is None:
            return not_found()
        origins = own_origins | {origin_of(str(request.base_url))}
        if not same_site(request.headers, origins):
            body = page.session_page(
                view(row, token),
                message="This request did not come from this page; nothing was changed.",
                problem=True,
            )
            return answer("Your appointment", body, 403)
        form = read_form(await request.body())
        version = links.form_version(form.get("form_token", ""), row.id)
        if version is None:
            body = page.session_page(
                view(row, token),
                message="This form is not valid; nothing was changed. Please try again.",
                problem=True,
            )
            return answer("Your appointment", body, 403)
        outcome = await actions.act(booking, row, action, form, version)
        if outcome.done is not None:
            return RedirectResponse(
                f"/m/{token}?done={outcome.done}", status_code=303, headers=page.HEADERS
            )
        fresh = await load(token)
        if fresh is None:
            return not_found()
        if outcome.show_times and view(fresh, token).actionable:
            slots = await actions.free_times(booking, fresh)
            body = page.reschedule_page(
                view(fresh, token), slots, message=outcome.message, problem=True
            )
            return answer("Reschedule", body, outcome.status)
        body = page.session_page(view(fresh, token), message=outcome.message, problem=True)
        return answer("Your appointment", body, outcome.status)

    return router
