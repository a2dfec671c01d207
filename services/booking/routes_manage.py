"""HTTP routes of the client's page (``manage.py``): ``/m/{token}``, no API key."""

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from services.booking import db, manage, usecases
from shared.errors import NotFound


def build_manage_router(booking: usecases.Booking, links: manage.ManageLinks) -> APIRouter:
    router = APIRouter(prefix="/m", include_in_schema=False)
    css_url = "/m/static/manage.css"
    own_origins = {manage.origin_of(links.base_url)}

    def answer(title: str, body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(
            manage.page(title, body, css_url), status_code=status, headers=manage.HEADERS
        )

    def not_found() -> HTMLResponse:
        return answer("Link not valid", manage.gone_page(), 404)

    async def load(token: str) -> db.Session | None:
        session_id = links.session_id(token)
        if session_id is None:
            return None
        try:
            row = await usecases.get_session(booking, session_id)
        except (usecases.NotFound, NotFound):
            return None
        return row if manage.is_open(row, booking.clock()) else None

    def view(row: db.Session, token: str) -> manage.View:
        return manage.View(row, token, links.form_token(row), booking.clock())

    @router.get("/static/manage.css")
    async def stylesheet() -> Response:
        return Response(
            manage.CSS,
            media_type="text/css",
            headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    @router.get("/{token}", response_class=HTMLResponse)
    async def show(token: str, done: str | None = None) -> HTMLResponse:
        row = await load(token)
        if row is None:
            return not_found()
        body = manage.session_page(view(row, token), message=manage.DONE_TEXT.get(done or ""))
        return answer("Your appointment", body)

    @router.get("/{token}/reschedule", response_class=HTMLResponse)
    async def times(token: str) -> HTMLResponse:
        row = await load(token)
        if row is None:
            return not_found()
        current = view(row, token)
        if not current.actionable:
            body = manage.session_page(
                current, message="This appointment can no longer be moved here.", problem=True
            )
            return answer("Your appointment", body, 409)
        slots = await manage.free_times(booking, row)
        return answer("Reschedule", manage.reschedule_page(current, slots))

    @router.post("/{token}/{action}", response_class=HTMLResponse)
    async def act(token: str, action: str, request: Request) -> Response:
        if action not in {"confirm", "cancel", "reschedule"}:
            return not_found()
        row = await load(token)
        if row is None:
            return not_found()
        origins = own_origins | {manage.origin_of(str(request.base_url))}
        if not manage.same_site(request.headers, origins):
            body = manage.session_page(
                view(row, token),
                message="This request did not come from this page; nothing was changed.",
                problem=True,
            )
            return answer("Your appointment", body, 403)
        form = manage.read_form(await request.body())
        version = links.form_version(form.get("form_token", ""), row.id)
        if version is None:
            body = manage.session_page(
                view(row, token),
                message="This form is not valid; nothing was changed. Please try again.",
                problem=True,
            )
            return answer("Your appointment", body, 403)
        outcome = await manage.act(booking, row, action, form, version)
        if outcome.done is not None:
            return RedirectResponse(
                f"/m/{token}?done={outcome.done}", status_code=303, headers=manage.HEADERS
            )
        fresh = await load(token)
        if fresh is None:
            return not_found()
        if outcome.show_times and view(fresh, token).actionable:
            slots = await manage.free_times(booking, fresh)
            body = manage.reschedule_page(
                view(fresh, token), slots, message=outcome.message, problem=True
            )
            return answer("Reschedule", body, outcome.status)
        body = manage.session_page(view(fresh, token), message=outcome.message, problem=True)
        return answer("Your appointment", body, outcome.status)

    return router
