"""HTTP layer: Twilio's Messages endpoints, the sandbox's admin endpoints, and the phone page.

API answers follow the OpenAPI spec for ``/2010-04-01/Accounts/{AccountSid}/Messages``;
admin endpoints live under ``/_sandbox`` and need no credentials (the sandbox listens
on loopback and holds no real data).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, time
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import TwilioError
from .faults import FaultRule
from .sandbox import Form, Sandbox
from .settings import SandboxSettings
from .store import DateFilter, Message, parse_date_param

API = "/2010-04-01/Accounts/{account_sid}"


class Reply(BaseModel):
    body: str = Field(max_length=1600)


def _form(raw: bytes) -> Form:
    """Parse a form body by hand: keeps repeated fields and empty values (``Body=""``)."""
    form: Form = {}
    for name, value in parse_qsl(raw.decode("utf-8"), keep_blank_values=True):
        form.setdefault(name, []).append(value)
    return form


def _int_param(raw: str | None, default: int, low: int, high: int | None) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise TwilioError(20001, message=f"Invalid integer: {raw!r}") from None
    if value < low or (high is not None and value > high):
        raise TwilioError(20001, message=f"Value out of range: {value}")
    return value


def _date_param(raw: str | None) -> datetime | date | None:
    """A midnight date-time counts as a whole day: the twilio client sends dates that way."""
    if not raw:
        return None
    try:
        value = parse_date_param(raw)
    except ValueError:
        raise TwilioError(20001, message=f"Invalid date: {raw!r}") from None
    if isinstance(value, datetime) and value.astimezone(UTC).time() == time(0):
        return value.astimezone(UTC).date()
    return value


def _list_answer(request: Request, messages: list[Message], account_sid: str) -> dict[str, Any]:
    """One page of ``GET Messages.json`` with Twilio's paging fields.

    ``next_page_uri`` carries ``PageToken=PA<sid of last item>`` so that following it
    stays stable while new messages arrive (they are listed newest first).
    """
    query = request.query_params
    size = _int_param(query.get("PageSize"), 50, 1, 1000)
    page = _int_param(query.get("Page"), 0, 0, None)
    token = query.get("PageToken")
    start = page * size
    sids = [m.sid for m in messages]
    if token and token.startswith("PA") and token[2:] in sids:
        start = sids.index(token[2:]) + 1
    items = messages[start : start + size]
    filters = [(k, v) for k, v in query.multi_items() if k not in ("Page", "PageSize", "PageToken")]
    base = f"/2010-04-01/Accounts/{account_sid}/Messages.json"

    def page_uri(number: int, page_token: str | None = None) -> str:
        params = [*filters, ("PageSize", str(size)), ("Page", str(number))]
        if page_token:
            params.append(("PageToken", page_token))
        return f"{base}?{urlencode(params)}"

    more = start + size < len(messages)
    return {
        "messages": [m.resource() for m in items],
        "page": page,
        "page_size": size,
        "uri": page_uri(page, token),
        "first_page_uri": page_uri(0),
        "next_page_uri": page_uri(page + 1, "PA" + items[-1].sid) if more and items else None,
        "previous_page_uri": page_uri(page - 1) if page > 0 else None,
        "start": start,
        "end": start + len(items) - 1 if items else start,
    }


def create_app(settings: SandboxSettings | None = None) -> FastAPI:
    """Build the sandbox app; tests pass their own settings and serve it on a free port."""
    settings = settings or SandboxSettings()
    sandbox = Sandbox(settings)
    page_html = resources.files(__package__).joinpath("page.html").read_text("utf-8")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await sandbox.network.close()

    app = FastAPI(title="Twilio Messaging sandbox", lifespan=lifespan, docs_url="/_sandbox/docs")
    app.state.sandbox = sandbox

    @app.exception_handler(TwilioError)
    async def twilio_error(_: Request, err: TwilioError) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Basic realm="Twilio API"'} if err.status == 401 else None
        return JSONResponse(err.payload(), status_code=err.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        if not request.url.path.startswith("/2010-04-01/"):
            return JSONResponse({"detail": err.detail}, status_code=err.status_code)
        code = 20404 if err.status_code == 404 else 20001
        twilio = TwilioError(code, status=err.status_code, path=request.url.path)
        return JSONResponse(twilio.payload(), status_code=err.status_code)

    def authenticate(request: Request, account_sid: str) -> None:
        """HTTP Basic with the account SID and auth token; the path must name that account."""
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        valid = (
            scheme.lower() == "basic"
            and secrets.compare_digest(user.encode(), settings.account_sid.encode())
            and secrets.compare_digest(password.encode(), settings.auth_token.encode())
        )
        if not valid or account_sid != settings.account_sid:
            raise TwilioError(20003)

    @app.post(API + "/Messages.json", status_code=201)
    async def create_message(account_sid: str, request: Request) -> dict[str, Any]:
        authenticate(request, account_sid)
        message = await sandbox.create(_form(await request.body()))
        return message.resource()

    @app.get(API + "/Messages.json")
    async def list_messages(account_sid: str, request: Request) -> dict[str, Any]:
        authenticate(request, account_sid)
        query = request.query_params
        on = _date_param(query.get("DateSent"))
        dates = DateFilter(
            on=on.date() if isinstance(on, datetime) else on,
            before=_date_param(query.get("DateSent<")),
            after=_date_param(query.get("DateSent>")),
        )
        found = sandbox.store.query(to=query.get("To"), from_=query.get("From"), dates=dates)
        return _list_answer(request, found, account_sid)

    @app.get(API + "/Messages/{sid}.json")
    async def fetch_message(account_sid: str, sid: str, request: Request) -> dict[str, Any]:
        authenticate(request, account_sid)
        return sandbox.find(sid, request.url.path).resource()

    @app.post(API + "/Messages/{sid}.json")
    async def update_message(account_sid: str, sid: str, request: Request) -> dict[str, Any]:
        authenticate(request, account_sid)
        message = sandbox.find(sid, request.url.path)
        return sandbox.update(message, _form(await request.body())).resource()

    @app.delete(API + "/Messages/{sid}.json", status_code=204)
    async def delete_message(account_sid: str, sid: str, request: Request) -> Response:
        authenticate(request, account_sid)
        sandbox.delete(sandbox.find(sid, request.url.path))
        return Response(status_code=204)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return page_html

    @app.get("/_sandbox/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "account_sid": settings.account_sid}

    @app.get("/_sandbox/threads")
    async def threads() -> dict[str, Any]:
        return {"sender": settings.from_number, "threads": sandbox.store.threads()}

    @app.get("/_sandbox/messages")
    async def all_messages() -> dict[str, Any]:
        """Everything received, in arrival order, with arrival times (epoch seconds)."""
        store = sandbox.store
        return {
            "messages": [m.debug_view() for m in store.messages.values()],
            "requests": store.requests,
            "opted_out": sorted(store.opted_out),
        }

    @app.post("/_sandbox/reset")
    async def reset() -> dict[str, Any]:
        sandbox.reset()
        return {"status": "reset"}

    @app.get("/_sandbox/faults")
    async def list_faults() -> list[FaultRule]:
        return sandbox.faults.all()

    @app.post("/_sandbox/faults", status_code=201)
    async def add_fault(rule: FaultRule) -> FaultRule:
        return sandbox.faults.add(rule)

    @app.delete("/_sandbox/faults")
    async def clear_faults() -> dict[str, Any]:
        sandbox.faults.clear()
        return {"status": "cleared"}

    @app.post("/_sandbox/phones/{phone}/reply")
    async def phone_reply(phone: str, reply: Reply) -> dict[str, Any]:
        return await sandbox.reply(phone, reply.body)

    return app
