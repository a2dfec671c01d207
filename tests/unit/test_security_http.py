"""The hostile-input guard (shared/http.py) in front of a real uvicorn: bodies over the
limit get 413 unread, undecodable bodies 400, and a route may allow more."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from fastapi import FastAPI, Request

from shared.http import HostileInputGuard, RouteLimit, install_input_guard, undecodable
from shared.settings import ServiceSettings
from tests.support import serve

pytestmark = pytest.mark.asyncio(loop_scope="session")

LIMIT = 4096


def guarded_app() -> tuple[FastAPI, list[int]]:
    app = FastAPI()
    reads: list[int] = []

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        if request.headers.get("authorization") != "Bearer k":
            return {"auth": "refused"}  # stands for the 401 the services answer
        body = await request.body()
        reads.append(len(body))
        return {"size": len(body)}

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, Any]:
        return {"size": len(await request.body())}

    @app.post("/form")
    async def form(request: Request) -> dict[str, Any]:
        return dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))

    install_input_guard(
        app,
        ServiceSettings(max_body_bytes=LIMIT),
        RouteLimit("POST", r"/upload", LIMIT * 4),
    )
    return app, reads


async def raw_request(base_url: str, head: bytes, body: bytes) -> bytes:
    """Send ``head`` and a part of a body by hand; the answer's first line and headers."""
    parts = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), timeout=10)
    finally:
        writer.close()


async def test_a_declared_200_mb_body_without_a_key_gets_413_before_a_byte_is_read() -> None:
    app, reads = guarded_app()
    async with serve(app) as base_url:
        head = (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200000000\r\n\r\n"
        )
        answer = await raw_request(base_url, head, b"{" * 1000)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert reads == []


async def test_a_chunked_body_is_cut_at_the_limit() -> None:
    app, reads = guarded_app()
    async with serve(app) as base_url:
        head = (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"  # 1 KiB each, never a last chunk
        answer = await raw_request(base_url, head, chunk * 6)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"larger than 4096" in answer
        async with httpx.AsyncClient(base_url=base_url) as client:
            ok = await client.post(
                "/echo", content=b"x" * LIMIT, headers={"Authorization": "Bearer k"}
            )
        assert ok.json() == {"size": LIMIT}
    assert reads == [LIMIT]


async def test_a_route_may_allow_more() -> None:
    app, _ = guarded_app()
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        assert (await client.post("/upload", content=b"x" * LIMIT * 3)).json() == {
            "size": LIMIT * 3
        }
        assert (await client.post("/upload", content=b"x" * (LIMIT * 4 + 1))).status_code == 413
        assert (await client.post("/echo", content=b"x" * (LIMIT + 1))).status_code == 413


async def test_undecodable_bodies_get_400() -> None:
    app, reads = guarded_app()
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        json_latin1 = await client.post(
            "/echo",
            content='{"name": "Jos\xe9"}'.encode("latin-1"),
            headers={"Content-Type": "application/json", "Authorization": "Bearer k"},
        )
        assert json_latin1.status_code == 400
        assert "UTF-8" in json_latin1.json()["detail"]
        form = await client.post(
            "/form",
            content=b"Body=%FF%FE&From=%2B12125550199",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 400
        raw_form = await client.post(
            "/form",
            content=b"Body=\xff\xfe",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert raw_form.status_code == 400
        good = await client.post(
            "/form",
            content=b"Body=Jos%C3%A9",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert good.json() == {"Body": "José"}
        bad_length = await raw_request(
            base_url, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", b""
        )
        assert bad_length.split(b"\r\n", 1)[0].split()[1] in (b"400",)
    assert reads == []


async def test_a_nul_character_anywhere_gets_400() -> None:
    # PostgreSQL refuses NUL in text (the route would answer 500); SQLite would store it.
    app, reads = guarded_app()

    @app.get("/things/{thing}")
    async def thing(thing: str, q: str = "") -> dict[str, str]:
        return {"thing": thing, "q": q}

    json_headers = {"Content-Type": "application/json", "Authorization": "Bearer k"}
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        for answer in (
            await client.post("/echo", content=b'{"name": "Jo\\u0000e"}', headers=json_headers),
            await client.post("/echo", content=b'{"a\\\\\\u0000": 1}', headers=json_headers),
            await client.post(
                "/form",
                content=b"Body=a%00b",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ),
            await client.get("/things/a%00b"),
            await client.get("/things/a", params={"q": "x\x00y"}),
        ):
            assert answer.status_code == 400, answer.request.url
            assert "NUL" in answer.json()["detail"]
        # An escaped backslash before "u0000" is text, not a NUL; "%2500" is "%00" as text.
        text = await client.post("/echo", content=b'{"name": "C:\\\\u0000"}', headers=json_headers)
        assert text.json() == {"size": 21}
        plain = await client.get("/things/a", params={"q": "100%00"})
        assert plain.json() == {"thing": "a", "q": "100%00"}
    assert reads == [21]


async def test_undecodable_reads_only_text_types() -> None:
    assert undecodable("application/json; charset=utf-8", b"{}") is None
    assert undecodable("application/pdf", b"\xff") is None
    assert undecodable("application/fhir+json", b"\xff") is not None
    assert HostileInputGuard(FastAPI(), max_body_bytes=10).limit_for("POST", "/x") == 10


async def test_each_service_is_guarded_and_report_uploads_get_10_mib(tmp_path: Any) -> None:
    from services.booking.app import create_app as booking_app
    from services.booking.settings import BookingSettings
    from services.referrals.app import create_app as referrals_app
    from services.referrals.settings import ReferralsSettings
    from services.reminders.app import create_app as reminders_app
    from services.reminders.settings import RemindersSettings

    def guard(app: FastAPI) -> HostileInputGuard:
        [middleware] = [m for m in app.user_middleware if m.cls is HostileInputGuard]
        return HostileInputGuard(FastAPI(), **middleware.kwargs)

    var = {"var_dir": tmp_path}
    for app in (booking_app(BookingSettings(**var)), reminders_app(RemindersSettings(**var))):
        assert guard(app).limit_for("POST", "/twilio/inbound") == 1024 * 1024
    referrals = guard(referrals_app(ReferralsSettings(**var)))
    assert referrals.limit_for("POST", "/v1/partner/referrals/abc/complete") == 10 * 1024 * 1024
    assert referrals.limit_for("POST", "/v1/partner/referrals/abc/notes") == 1024 * 1024
    assert referrals.limit_for("POST", "/v1/plans") == 1024 * 1024
