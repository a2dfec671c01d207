"""Helpers of the referrals tests: the service on a real port, a partner's webhook receiver
that checks what it gets like a partner would, booking's events published to NATS."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fhir.resources.R4B.bundle import Bundle

from services.referrals import signing
from services.referrals.app import create_app
from services.referrals.settings import ReferralsSettings
from shared import events
from tests.support import ADMIN_KEY, AUTH, serve, wait_ready
from tools.kit import call, care
from tools.kit import events as kit_events
from tools.kit.care import component, partner_body, plan_body
from tools.kit.events import publish as publish

HOUR_PER_SECOND = 1 / 3600


def referrals_settings(database_url: str, nats_url: str, **extra: Any) -> ReferralsSettings:
    """Fast loops for tests, and a lease key of its own so tests never wait on each other."""
    values: dict[str, Any] = {
        "referrals_database_url": database_url,
        "nats_url": nats_url,
        "admin_api_key": ADMIN_KEY,
        "outbox_poll_seconds": 0.2,
        "retry_base_seconds": 0.05,
        "max_deliver": 3,
        "referrals_webhook_backoff_seconds": 0.05,
        "referrals_webhook_backoff_max_seconds": 0.2,
        "referrals_webhook_timeout_seconds": 5,
        "referrals_delivery_poll_seconds": 0.2,
        "referrals_deadline_poll_seconds": 0.2,
        "referrals_lease_key": f"referrals-test-{uuid.uuid4().hex[:12]}",
        "referrals_lease_ttl_seconds": 3,
        # The tests' webhook receivers run on 127.0.0.1 (see tests/integration/test_ssrf.py).
        "outbound_allowed_hosts": "127.0.0.1:*,localhost:*",
    }
    values.update(extra)
    return ReferralsSettings(**values)


@asynccontextmanager
async def running_referrals(
    database_url: str, nats_url: str, **extra: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The referrals app under uvicorn on a free port, ready; an admin client for it."""
    app = create_app(referrals_settings(database_url, nats_url, **extra))
    async with serve(app) as base_url:
        await wait_ready(base_url)
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=30) as client:
            yield client, app


def as_partner(client: httpx.AsyncClient, api_key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=client.base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    )


# -- booking's events -----------------------------------------------------------------------


def client_event(
    client_id: str,
    *,
    first_name: str = "Maria",
    last_name: str = "Lopez",
    phone: str = "+12125550199",
    date_of_birth: date | None = date(1980, 2, 3),
    event_type: str = events.CLIENT_CREATED,
) -> events.CloudEvent[Any]:
    return kit_events.client_event(
        client_id,
        event_type=event_type,
        first_name=first_name,
        last_name=last_name,
        phone=phone,
        date_of_birth=date_of_birth,
        email="maria@example.com",
    )


def session_event(
    client_id: str, event_type: str = events.SESSION_COMPLETED, session_id: str | None = None
) -> events.CloudEvent[Any]:
    return kit_events.session_event(
        event_type,
        session_id=session_id,
        version=3,
        status="completed" if event_type == events.SESSION_COMPLETED else "no_show",
        start=datetime.now(UTC) + timedelta(minutes=5),
        client=kit_events.client_ref(client_id, phone="+12125550199"),
        therapist=events.TherapistRef(id="t1", display_name="Ana"),
        service=kit_events.MEDICAL_MASSAGE,
    )


# -- a partner's webhook receiver -----------------------------------------------------------


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes
    status_answered: int
    verified: bool
    error: str | None
    bundle: Bundle | None

    def resource(self, kind: str) -> dict[str, Any]:
        data = json.loads(self.body)
        return next(e["resource"] for e in data["entry"] if e["resource"]["resourceType"] == kind)


@dataclass
class WebhookReceiver:
    """What a careful partner does: verify the signature, validate the Bundle as FHIR R4B,
    answer 401/400 when either fails; ``answers`` scripts the status codes of the first
    requests (then 200)."""

    secret: str | None = None
    url: str = ""
    answers: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/webhook")
        async def webhook(request: Request) -> JSONResponse:
            body = await request.body()
            headers = {k.lower(): v for k, v in request.headers.items()}
            verified, error, bundle = False, None, None
            try:
                assert self.secret is not None, "receiver has no secret yet"
                signing.verify(self.secret, headers.get("x-referral-signature"), body)
                verified = True
                bundle = Bundle.model_validate_json(body)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            if not verified:
                status = 401
            elif bundle is None:
                status = 400
            else:
                status = self.answers.pop(0) if self.answers else 200
            self.received.append(
                Received(time.time(), headers, body, status, verified, error, bundle)
            )
            return JSONResponse({"ok": status == 200}, status_code=status)

        return app

    def accepted(self, kind: str | None = None) -> list[Received]:
        """Requests answered 200, optionally only of one ``X-Referral-Event`` kind."""
        return [
            r
            for r in self.received
            if r.status_answered == 200
            and (kind is None or r.headers.get("x-referral-event") == f"referral.{kind}")
        ]


@asynccontextmanager
async def webhook_receiver(answers: list[int] | None = None) -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver(answers=list(answers or []))
    async with serve(receiver.app()) as base_url:
        receiver.url = f"{base_url}/webhook"
        yield receiver


# -- clinic data ------------------------------------------------------------------------------


async def post_ok(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    return dict(await call(client, "POST", path, json=body))


async def make_partner(
    client: httpx.AsyncClient,
    *,
    discipline: str = "physical_therapy",
    webhook_url: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    return await post_ok(
        client, "/v1/partners", partner_body(name, discipline=discipline, webhook_url=webhook_url)
    )


async def make_plan(
    client: httpx.AsyncClient, client_id: str, *, massage_sessions: int = 2, **pt: Any
) -> dict[str, Any]:
    components = [
        component("massage", massage_sessions, 1),
        component("physical_therapy", 6, 2, **pt),
        component("acupuncture", 4, 1),
    ]
    return await post_ok(client, "/v1/plans", plan_body(client_id, components=components))


def referral_body(plan: dict[str, Any], partner: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return care.referral_body(plan["id"], partner["id"], **extra)


async def known_client(client: httpx.AsyncClient, client_id: str) -> bool:
    return (await client.get(f"/v1/clients/{client_id}")).status_code == 200
