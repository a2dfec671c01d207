"""Referrals' composition root: database, broker, consumers, outbox relay, webhook dispatcher,
deadline scheduler and the HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from faststream.nats import NatsBroker
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from services.referrals import api, usecases
from services.referrals.deadlines import DeadlineScheduler
from services.referrals.delivery import WebhookDispatcher
from services.referrals.migrate import upgrade
from services.referrals.secretbox import SecretBox
from services.referrals.settings import ReferralsSettings
from shared import events
from shared.auth import Authenticator
from shared.broker import (
    Consumer,
    ensure_consumer,
    ensure_streams,
    jetstream,
    make_broker,
    publish_raw,
    register_consumer,
    watch_max_deliveries,
)
from shared.db import create_engine, sessionmaker_for
from shared.events import CloudEvent
from shared.outbox import OutboxRelay

log = structlog.get_logger(__name__)

#: booking's client events (``.created``, ``.updated``) and session events (all of them;
#: only ``.completed`` and ``.no_show`` change anything here).
CLIENT_EVENTS = "booking.client.*"
SESSION_EVENTS = "booking.session.*"


@dataclass
class Runtime:
    """What the lifespan starts and stops; tests reach in here to look."""

    settings: ReferralsSettings
    referrals: usecases.Referrals
    broker: NatsBroker
    relay: OutboxRelay
    dispatcher: WebhookDispatcher
    deadlines: DeadlineScheduler | None
    consumers: list[Consumer]
    nats_ready: asyncio.Event = field(default_factory=asyncio.Event)


def build_consumers(referrals: usecases.Referrals, settings: ReferralsSettings) -> list[Consumer]:
    async def on_client(session: Any, event: CloudEvent[Any]) -> None:
        await usecases.apply_client_event(referrals, session, event)
        referrals.remember_wakes(session)

    async def on_session(session: Any, event: CloudEvent[Any]) -> None:
        await usecases.apply_session_event(referrals, session, event)
        referrals.remember_wakes(session)

    common: dict[str, Any] = {
        "service": "referrals",
        "stream": events.BOOKING_STREAM,
        "max_deliver": settings.max_deliver,
        "retry_base_seconds": settings.retry_base_seconds,
        "after_commit": referrals.wake_remembered,
    }
    return [
        Consumer(purpose="clients", subject=CLIENT_EVENTS, handler=on_client, **common),
        Consumer(purpose="sessions", subject=SESSION_EVENTS, handler=on_session, **common),
    ]


async def _connect_when_possible(runtime: Runtime) -> None:
    """Bring NATS up in the background: HTTP works (and the outbox fills) while it is away."""
    delay = 0.2
    while True:
        try:
            await runtime.broker.connect()
            js = jetstream(runtime.broker)
            await ensure_streams(js)
            for consumer in runtime.consumers:
                await ensure_consumer(js, consumer)
            await runtime.broker.start()
            await watch_max_deliveries(runtime.broker, runtime.consumers)
            runtime.nats_ready.set()
            log.info("nats.ready", url=runtime.settings.nats_url)
            if runtime.deadlines is not None:
                runtime.deadlines.start()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("nats.unavailable", error=f"{type(exc).__name__}: {exc}", retry_in=delay)
            with contextlib.suppress(Exception):
                await runtime.broker.stop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def create_app(settings: ReferralsSettings | None = None) -> FastAPI:
    settings = settings or ReferralsSettings()
    engine = create_engine(settings.database_url)
    sessions = sessionmaker_for(engine)
    broker = make_broker(settings.nats_url, "referrals")

    async def publish(subject: str, payload: bytes, msg_id: str) -> None:
        if not runtime.nats_ready.is_set():
            raise ConnectionError("NATS is not connected yet")
        await publish_raw(jetstream(broker), subject, payload, msg_id)

    relay = OutboxRelay(sessions, publish, poll_seconds=settings.outbox_poll_seconds)
    referrals = usecases.Referrals(
        sessions=sessions,
        secretbox=SecretBox(settings.referrals_secret_key),
        default_phone_region=settings.default_phone_region,
        production=settings.production,
        clinic_name=settings.referrals_clinic_name,
        base_url=settings.base_url,
        accept_hours=settings.referrals_accept_hours,
        expire_after_hours=settings.referrals_expire_after_hours,
        webhook_retry_hours=settings.referrals_webhook_retry_hours,
    )
    dispatcher = WebhookDispatcher(
        referrals,
        timeout_seconds=settings.referrals_webhook_timeout_seconds,
        backoff_seconds=settings.referrals_webhook_backoff_seconds,
        backoff_max_seconds=settings.referrals_webhook_backoff_max_seconds,
        concurrency=settings.referrals_webhook_concurrency,
        poll_seconds=settings.referrals_delivery_poll_seconds,
    )
    deadlines = (
        DeadlineScheduler(
            referrals,
            jobstore_url=settings.jobstore_url,
            jetstream=lambda: jetstream(broker),
            lease_bucket=settings.referrals_lease_bucket,
            lease_key=settings.referrals_lease_key,
            lease_ttl_seconds=settings.referrals_lease_ttl_seconds,
            poll_seconds=settings.referrals_deadline_poll_seconds,
        )
        if settings.referrals_scheduler
        else None
    )
    referrals.wakers[usecases.RELAY] = relay.wake
    referrals.wakers[usecases.DISPATCHER] = dispatcher.wake
    if deadlines is not None:
        referrals.wakers[usecases.DEADLINES] = deadlines.wake
    consumers = build_consumers(referrals, settings)
    for consumer in consumers:
        register_consumer(broker, consumer, sessions)
    runtime = Runtime(settings, referrals, broker, relay, dispatcher, deadlines, consumers)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await asyncio.to_thread(upgrade, settings.database_url)
        relay.start()
        dispatcher.start()
        connecting = asyncio.create_task(_connect_when_possible(runtime))
        try:
            yield
        finally:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
            if deadlines is not None:
                await deadlines.stop()
            await dispatcher.stop()
            await relay.stop()
            with contextlib.suppress(Exception):
                await broker.stop()
            await engine.dispose()

    app = FastAPI(
        title="Clinic referrals",
        version="1.0.0",
        description=(
            "Partners, multi-therapy care plans, referrals to partner providers and their "
            "lifecycle (a FHIR Task), the partner API, FHIR R4 views, signed partner webhooks."
        ),
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    api.install_error_handlers(app)
    authenticate = Authenticator(sessions, settings.admin_api_key)
    app.include_router(api.build_router(referrals, authenticate))
    app.include_router(api.build_partner_router(referrals, authenticate))
    app.include_router(api.build_fhir_router(referrals, authenticate))

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = type(exc).__name__
        connected = (
            runtime.nats_ready.is_set()
            and broker.connection is not None
            and broker.connection.is_connected
        )
        checks["nats"] = "ok" if connected else "unavailable"
        ready = all(v == "ok" for v in checks.values())
        body: dict[str, Any] = {"ready": ready, **checks}
        if deadlines is not None:  # informative: a standby is as ready as the leader
            body["scheduler"] = "active" if deadlines.leader else "standby"
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
