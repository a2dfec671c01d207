"""Referrals' composition root: database, broker, consumers, outbox relay, webhook dispatcher,
deadline scheduler and the HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import FastAPI
from faststream.nats import NatsBroker

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
    jetstream,
)
from shared.db import create_engine, sessionmaker_for
from shared.events import CloudEvent
from shared.http import RouteLimit, install_input_guard
from shared.outbound import OutboundPolicy
from shared.outbox import OutboxRelay
from shared.service import Messaging, add_ops_routes

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
    nats_ready: asyncio.Event


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


def create_app(settings: ReferralsSettings | None = None) -> FastAPI:
    settings = settings or ReferralsSettings()
    engine = create_engine(settings.database_url)
    sessions = sessionmaker_for(engine)
    messaging = Messaging(
        "referrals", settings.nats_url, sessions, outbox_poll_seconds=settings.outbox_poll_seconds
    )
    broker, relay = messaging.broker, messaging.relay
    referrals = usecases.Referrals(
        sessions=sessions,
        secretbox=SecretBox(settings.referrals_secret_key),
        default_phone_region=settings.default_phone_region,
        production=settings.production,
        outbound=OutboundPolicy.from_settings(settings),
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
    messaging.add_consumers(build_consumers(referrals, settings))
    if deadlines is not None:
        messaging.when_ready(deadlines.start)
    runtime = Runtime(
        settings,
        referrals,
        broker,
        relay,
        dispatcher,
        deadlines,
        messaging.consumers,
        messaging.ready,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await asyncio.to_thread(upgrade, settings.database_url)
        dispatcher.start()
        messaging.start()
        try:
            yield
        finally:
            if deadlines is not None:
                await deadlines.stop()
            await dispatcher.stop()
            await messaging.stop()
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
    # A partner's outcome report carries a PDF (up to 5 MB, base64): 10 MiB there.
    install_input_guard(
        app, settings, RouteLimit("POST", r"/v1/partner/referrals/[^/]+/complete", 10 * 1024 * 1024)
    )
    authenticate = Authenticator(sessions, settings.admin_api_key)
    app.include_router(api.build_router(referrals, authenticate))
    app.include_router(api.build_partner_router(referrals, authenticate))
    app.include_router(api.build_fhir_router(referrals, authenticate))

    def scheduler_role() -> dict[str, Any]:
        # Informative: a standby is as ready as the leader.
        if deadlines is None:
            return {}
        return {"scheduler": "active" if deadlines.leader else "standby"}

    add_ops_routes(app, engine, messaging, scheduler_role)

    return app
