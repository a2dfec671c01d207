"""Reminders' HTTP routes: rules, the message log, Twilio's webhooks and the linked pages."""

from typing import Annotated, Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from twilio.request_validator import RequestValidator

from services.reminders import admin, aftercare, queries, replies, texts
from services.reminders import status as statuses
from services.reminders.context import Reminders
from services.reminders.links import AFTERCARE, REFERRAL, LinkExpired, LinkInvalid
from services.reminders.schemas import MessageOut, RulesIn, RulesOut
from shared.auth import Principal, Scope, clinic_scope
from shared.errors import NotFound
from shared.pagination import Paged, finish
from shared.phones import normalize_phone


def twiml(answer: str | None) -> Response:
    body = f"<Message>{escape(answer)}</Message>" if answer else ""
    return Response(
        f'<?xml version="1.0" encoding="UTF-8"?><Response>{body}</Response>',
        media_type="application/xml",
    )


def message_out(row: Any) -> MessageOut:
    return MessageOut.model_validate(row, from_attributes=True)


def build_router(app: Reminders, authenticate: Any) -> APIRouter:
    router = APIRouter()
    settings = app.settings
    validator = RequestValidator(settings.twilio_auth_token)
    Caller = Annotated[Principal, Depends(authenticate)]
    Scoped = Annotated[Scope, Depends(clinic_scope(authenticate))]

    async def signed_form(request: Request) -> dict[str, str]:
        """Twilio's form, once ``X-Twilio-Signature`` matches the public URL it called."""
        form = dict(parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True))
        url = settings.base_url + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        signature = request.headers.get("x-twilio-signature", "")
        if not signature or not validator.validate(url, form, signature):
            raise HTTPException(403, "missing or invalid X-Twilio-Signature")
        return form

    @router.get("/v1/rules", response_model=RulesOut, tags=["rules"])
    async def get_rules(caller: Caller) -> dict[str, Any]:
        caller.require_role("admin")
        return (await queries.get_rules(app)).as_dict()

    @router.put("/v1/rules", response_model=RulesOut, tags=["rules"])
    async def put_rules(body: RulesIn, caller: Caller) -> dict[str, Any]:
        """Replace the rules; every future message is planned again under them."""
        caller.require_role("admin")
        return (await admin.put_rules(app, body.model_dump())).as_dict()

    @router.get("/v1/messages", response_model=list[MessageOut], tags=["messages"])
    async def messages(
        scope: Scoped,
        page: Paged,
        request: Request,
        response: Response,
        session_id: str | None = None,
        phone: str | None = None,
    ) -> list[MessageOut]:
        """The message log, newest first, with each message's delivery status; a front
        desk sees the messages of its locations' sessions only. At most ``limit`` a page;
        the next page's cursor is in ``X-Next-Cursor``."""
        normalized = normalize_phone(phone, settings.default_phone_region) if phone else None
        rows = await queries.list_messages(
            app, session_id=session_id, phone=normalized, scope=scope, page=page
        )
        return [message_out(r) for r in finish(rows, page, queries.message_key, request, response)]

    @router.post("/twilio/inbound", tags=["twilio"], response_class=Response)
    async def inbound(form: Annotated[dict[str, str], Depends(signed_form)]) -> Response:
        """A text from a phone (Twilio's incoming-message webhook); answers in TwiML."""
        sid, phone = form.get("MessageSid", ""), form.get("From", "")
        if not sid or not phone:
            raise HTTPException(422, "MessageSid and From are required")
        answer = await replies.handle_inbound(
            app, replies.Inbound(sid=sid, phone=phone, body=form.get("Body", ""))
        )
        return twiml(answer)

    @router.post("/twilio/status", tags=["twilio"], status_code=204, response_class=Response)
    async def status(form: Annotated[dict[str, str], Depends(signed_form)]) -> Response:
        """Twilio's status callback for a message we sent."""
        sid = form.get("MessageSid", "")
        state = form.get("MessageStatus") or form.get("SmsStatus") or ""
        if not sid or not state:
            raise HTTPException(422, "MessageSid and MessageStatus are required")
        code = form.get("ErrorCode")
        await statuses.record_status(
            app, sid, state, int(code) if code and code.isdigit() else None
        )
        return Response(status_code=204)

    def contact() -> tuple[str, str, str]:
        phone = settings.clinic_phone
        return settings.clinic_name, phone, texts.display_phone(phone) if phone else ""

    @router.get("/a/{token}", response_class=HTMLResponse, tags=["pages"])
    async def aftercare_page(token: str) -> HTMLResponse:
        """The aftercare page a follow-up text links to (signed, expiring)."""
        try:
            session_id = app.links.read(AFTERCARE, token)
            row = await queries.session_for_page(app, session_id)
        except LinkExpired:
            return HTMLResponse(
                aftercare.problem_page(
                    "This link has expired", "For aftercare advice,", *contact()
                ),
                status_code=410,
            )
        except (LinkInvalid, NotFound):
            return HTMLResponse(
                aftercare.problem_page("This link is not valid", "Please check it, or", *contact()),
                status_code=404,
            )
        content = app.aftercare.for_modality(row.modality)
        shown = texts.display_phone(row.location_phone, settings.default_phone_region)
        html = aftercare.aftercare_page(content, row.location_name, row.location_phone, shown)
        return HTMLResponse(html, headers={"Cache-Control": "private, no-store"})

    @router.get("/r/{token}", response_class=HTMLResponse, tags=["pages"])
    async def referral_page(token: str) -> HTMLResponse:
        """The page a referral update text links to (signed, expiring)."""
        try:
            referral_id = app.links.read(REFERRAL, token)
            notice, clinic, phone = await queries.referral_for_page(app, referral_id)
        except LinkExpired:
            return HTMLResponse(
                aftercare.problem_page(
                    "This link has expired", "For news on your referral,", *contact()
                ),
                status_code=410,
            )
        except (LinkInvalid, NotFound):
            return HTMLResponse(
                aftercare.problem_page("This link is not valid", "Please check it, or", *contact()),
                status_code=404,
            )
        shown = texts.display_phone(phone, settings.default_phone_region) if phone else ""
        html = aftercare.referral_page(notice.status, notice.discipline, clinic, phone, shown)
        return HTMLResponse(html, headers={"Cache-Control": "private, no-store"})

    return router
