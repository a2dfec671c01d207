"""Outbound URLs (calendar links, partner webhooks) never reach loopback, private or
link-local addresses unless listed in OUTBOUND_ALLOWED_HOSTS: refused when stored (422),
before every request and at every redirect hop; stored errors never quote a body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

from services.booking.app import create_app
from services.booking.calendar.caldav import (
    CalDavCalendar,
    CalendarUnavailable,
    Credentials,
    fetch_ics,
)
from services.booking.calendar.ical import busy_spans
from services.booking.domain import Interval
from shared.outbound import OutboundPolicy, OutboundRefused
from shared.timeutil import zone
from tests.integration.test_booking_api import make_clinic, settings_for
from tests.referrals_support import make_partner, running_referrals
from tests.support import AUTH, serve, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="session")

INTERNAL = ["http://127.0.0.1/x", "http://10.0.0.1/x", "http://169.254.169.254/latest/meta-data"]
MORE_INTERNAL = [
    "http://localhost:8080/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://192.168.1.1/",
    "http://172.16.0.1/",
    "http://[fd00::1]/",
    "http://[fe80::1]/",
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "https://100.64.0.1/",
]


class Internal:
    """A pretend internal service: records who reached it; its body is a secret."""

    def __init__(self) -> None:
        self.hits = 0
        self.url = ""

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.api_route("/{path:path}", methods=["GET", "POST", "PROPFIND", "REPORT"])
        async def secret(path: str) -> Response:
            self.hits += 1
            return PlainTextResponse("TOP-SECRET-INTERNAL-DATA")

        return app


def redirector(target: str) -> FastAPI:
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST", "PROPFIND", "REPORT"])
    async def hop(path: str, request: Request) -> Response:
        return RedirectResponse(target, status_code=307 if request.method != "GET" else 302)

    return app


@pytest_asyncio.fixture(loop_scope="session")
async def internal() -> AsyncIterator[Internal]:
    server = Internal()
    async with serve(server.app()) as base_url:
        server.url = f"{base_url}/secret"
        yield server


def host_port(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.host}:{parsed.port}"


@pytest.mark.parametrize("url", INTERNAL + MORE_INTERNAL)
async def test_internal_addresses_are_refused(url: str) -> None:
    with pytest.raises(OutboundRefused, match="OUTBOUND_ALLOWED_HOSTS"):
        await OutboundPolicy().acheck(url)
    with pytest.raises(OutboundRefused):
        OutboundPolicy().check(url)


async def test_listed_hosts_public_addresses_and_unknown_names_pass() -> None:
    policy = OutboundPolicy.of(["127.0.0.1:80", "10.0.0.1:*"])
    await policy.acheck("http://127.0.0.1/x")
    await policy.acheck("http://10.0.0.1:8443/x")
    with pytest.raises(OutboundRefused):
        await policy.acheck("http://127.0.0.1:81/x")  # another port of a listed host
    await policy.acheck("https://93.184.215.14/feed.ics")  # a public address
    await policy.acheck("https://calendar.invalid/feed.ics")  # fails later, on its own
    with pytest.raises(OutboundRefused):
        await policy.acheck("file:///etc/passwd")


async def test_a_request_to_an_unlisted_local_server_is_refused_and_never_reaches_it(
    internal: Internal,
) -> None:
    with pytest.raises(CalendarUnavailable, match="refused"):
        await fetch_ics(internal.url, Credentials(), 5, OutboundPolicy())
    assert internal.hits == 0
    allowed = OutboundPolicy.of([host_port(internal.url)])
    assert await fetch_ics(internal.url, Credentials(), 5, allowed) == b"TOP-SECRET-INTERNAL-DATA"
    assert internal.hits == 1


@pytest.mark.parametrize("target", [*INTERNAL, "INTERNAL"])
async def test_a_redirect_to_an_internal_address_is_refused(
    internal: Internal, target: str
) -> None:
    target = internal.url if target == "INTERNAL" else target
    async with serve(redirector(target)) as hop:
        # The redirecting server itself is allowed; where it sends us is not.
        policy = OutboundPolicy.of([host_port(hop)])
        with pytest.raises(CalendarUnavailable, match="refused") as ics_refused:
            await fetch_ics(f"{hop}/feed.ics", Credentials(), 5, policy)
        assert "TOP-SECRET" not in str(ics_refused.value)
        caldav = CalDavCalendar(f"{hop}/dav/ana/", Credentials("ana", "pw"), 5, policy)
        now = datetime.now(UTC)
        with pytest.raises(CalendarUnavailable, match="refused"):
            await asyncio.to_thread(caldav.resources, now, now + timedelta(days=1))
        async with httpx.AsyncClient(transport=policy.transport(), follow_redirects=True) as c:
            with pytest.raises(OutboundRefused):
                await c.post(f"{hop}/webhook", content=b"{}")
    assert internal.hits == 0


async def test_stored_errors_never_quote_what_came_back(internal: Internal) -> None:
    allowed = OutboundPolicy.of([host_port(internal.url)])
    text = await fetch_ics(internal.url, Credentials(), 5, allowed)
    now = datetime.now(UTC)
    with pytest.raises(ValueError) as refused:
        busy_spans([text], Interval(now, now + timedelta(days=1)), zone("UTC"))
    assert "TOP-SECRET" not in str(refused.value)
    assert "not an iCalendar" in str(refused.value)


async def test_booking_refuses_internal_calendar_links_unless_listed(
    sqlite_database_url: str, nats_url: str, internal: Internal
) -> None:
    listed = host_port(internal.url)
    app = create_app(
        settings_for(sqlite_database_url, nats_url, outbound_allowed_hosts=f"{listed}")
    )
    async with serve(app) as base_url:
        await wait_ready(base_url)
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=30) as client:
            clinic = await make_clinic(client)
            body: dict[str, Any] = {
                "owner_type": "therapist",
                "owner_id": clinic["therapists"][0]["id"],
                "direction": "pull",
                "kind": "ics",
            }
            for url in INTERNAL:
                refused = await client.post("/v1/calendar-links", json={**body, "url": url})
                assert refused.status_code == 422, refused.text
                assert "url" in refused.text and "OUTBOUND_ALLOWED_HOSTS" in refused.text
            created = await client.post("/v1/calendar-links", json={**body, "url": internal.url})
            assert created.status_code == 201, created.text


async def test_referrals_refuses_internal_partner_webhooks_unless_listed(
    sqlite_database_url: str, nats_url: str, internal: Internal
) -> None:
    listed = host_port(internal.url)
    async with running_referrals(sqlite_database_url, nats_url, outbound_allowed_hosts=listed) as (
        client,
        _app,
    ):
        for url in INTERNAL:
            refused = await client.post(
                "/v1/partners",
                json={
                    "name": "Sneaky PT",
                    "discipline": "physical_therapy",
                    "phone": "(212) 555-0142",
                    "email": "a@partner.example",
                    "webhook_url": url,
                },
            )
            assert refused.status_code == 422, refused.text
            assert "webhook_url" in refused.text
        assert await make_partner(client, webhook_url=internal.url)
