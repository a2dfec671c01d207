"""Referrals' composition root: database and unit of work, broker, consumers, outbox relay,
webhook dispatcher, deadline scheduler and the HTTP app, each built whole here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import FastAPI
from faststream.nats import NatsBroker
from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals import api
from services.referrals.deadlines import Deadlines
from services.referrals.delivery import WebhookDispatcher
from services.referrals.migrate import upgrade
from services.referrals.settings import ReferralsSettings
from services.referrals.usecases import Referrals, from_booking, from_reminders
from services.referrals.usecases.context import DEADLINES, DISPATCHER
from services.referrals.usecases.create_queue import CreateQueue
from shared import events
from shared.auth import Authenticator, remember_key
from shared.broker import jetstream
from shared.consumers import Consumer
from shared.db import create_engine, sync_url
from shared.events import ClientEvent, CloudEvent, SessionEvent
from shared.gate import Gate
from shared.http import RouteLimit, install_input_guard
from shared.outbound import OutboundPolicy
from shared.outbox import OutboxRelay
from shared.scheduling import JobStoreConfig
from shared.secretbox import SecretBox
from shared.service import Messaging, add_ops_routes
from shared.uow import UnitOfWork

log = structlog.get_logger(__name__)

#: booking's client events (``.created``, ``.updated``) and session events (all of them;
#: only ``.completed`` and ``.no_show`` change anything here).
CLIENT_EVENTS = "booking.client.*"
SESSION_EVENTS = "booking.session.*"


@dataclass
class Runtime:
    """What the lifespan starts and stops; tests reach in here to look."""

    settings: ReferralsSettings
    referrals: Referrals
    broker: NatsBroker
    relay: OutboxRelay
    dispatcher: WebhookDispatcher
    deadlines: Deadlines | None
    consumers: list[Consumer]
    nats_ready: asyncio.Event


def build_consumers(referrals: Referrals, settings: ReferralsSettings) -> list[Consumer]:
    """Booking's events and reminders' check-in answers, each applied in the consumer's unit
    of work (the use cases ask for the dispatcher and the planner to be woken after its
    commit)."""

    async def on_client(session: AsyncSession, event: CloudEvent[ClientEvent]) -> None:
        await from_booking.apply_client_event(referrals, session, event)

    async def on_session(session: AsyncSession, event: CloudEvent[SessionEvent]) -> None:
        await from_booking.apply_session_event(referrals, session, event)

    async def on_key(session: AsyncSession, event: CloudEvent[events.ApiKeyEvent]) -> None:
        await remember_key(session, event.data)

    async def on_outcome(session: AsyncSession, event: CloudEvent[events.OutcomeRecorded]) -> None:
        await from_reminders.apply_outcome(referrals, session, event)

    common: dict[str, Any] = {
        "service": "referrals",
        "stream": events.BOOKING_STREAM,
        "max_deliver": settings.max_deliver,
        "retry_base_seconds": settings.retry_base_seconds,
    }
    return [
        Consumer(purpose="clients", subject=CLIENT_EVENTS, handler=on_client, **common),
        Consumer(purpose="sessions", subject=SESSION_EVENTS, handler=on_session, **common),
        # Keys issued and revoked at booking: the Authenticator reads them from our table.
        Consumer.of(
            events.REFERRALS_APIKEYS,
            on_key,
            max_deliver=settings.max_deliver,
            retry_base_seconds=settings.retry_base_seconds,
        ),
        # Check-in answers from reminders: pain scores on the client's plan.
        Consumer.of(
            events.REFERRALS_OUTCOMES,
            on_outcome,
            max_deliver=settings.max_deliver,
            retry_base_seconds=settings.retry_base_seconds,
        ),
    ]


def job_store_gate(uow: UnitOfWork, settings: ReferralsSettings) -> Gate:
    """The gate the deadline scheduler's job store goes through.

    The gate only matters when the job store shares the SQLite file of our sessions (it
    waits for every session to close and holds new ones back meanwhile). The default on
    SQLite is a sibling file with a lock of its own (see ``settings.jobstore_url``), so
    there it is off and nothing waits for the scheduler; on PostgreSQL it is off anyway.
    """
    if sync_url(settings.database_url) == settings.jobstore_url:
        return uow.gate
    return Gate(enabled=False)


def create_app(settings: ReferralsSettings | None = None) -> FastAPI:
    settings = settings or ReferralsSettings()
    engine = create_engine(settings.database_url)
    uow = UnitOfWork(engine)
    messaging = Messaging(
        "referrals",
        settings.nats_url,
        uow,
        outbox_poll_seconds=settings.outbox_poll_seconds,
        replicas=settings.nats_replicas,
    )
    broker = messaging.broker
    referrals = Referrals(
        uow=uow,
        secretbox=SecretBox(settings.referrals_secret_key, setting="REFERRALS_SECRET_KEY"),
        default_phone_region=settings.default_phone_region,
        production=settings.production,
        outbound=OutboundPolicy.from_settings(settings),
        clinic_name=settings.referrals_clinic_name,
        base_url=settings.base_url,
        accept_hours=settings.referrals_accept_hours,
        expire_after_hours=settings.referrals_expire_after_hours,
        webhook_retry_hours=settings.referrals_webhook_retry_hours,
        creates=CreateQueue(),
    )
    dispatcher = WebhookDispatcher(
        referrals,
        timeout_seconds=settings.referrals_webhook_timeout_seconds,
        backoff_seconds=settings.referrals_webhook_backoff_seconds,
        backoff_max_seconds=settings.referrals_webhook_backoff_max_seconds,
        concurrency=settings.referrals_webhook_concurrency,
        poll_seconds=settings.referrals_delivery_poll_seconds,
    )
    uow.on_commit(DISPATCHER, dispatcher.wake)
    deadlines = (
        Deadlines(
            referrals,
            store=JobStoreConfig(settings.jobstore_url),
            poll_seconds=settings.referrals_deadline_poll_seconds,
            gate=job_store_gate(uow, settings),
            jetstream=lambda: jetstream(broker),
            connected=messaging.ready,
            lease_key=settings.referrals_lease_key,
            lease_bucket=settings.referrals_lease_bucket,
            lease_ttl_seconds=settings.referrals_lease_ttl_seconds,
        )
        if settings.referrals_scheduler
        else None
    )
    if deadlines is not None:
        uow.on_commit(DEADLINES, deadlines.wake)
    messaging.add_consumers(build_consumers(referrals, settings))
    runtime = Runtime(
        settings,
        referrals,
        broker,
        messaging.relay,
        dispatcher,
        deadlines,
        messaging.consumers,
        messaging.ready,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await asyncio.to_thread(upgrade, settings.database_url)
        assert referrals.creates is not None
        referrals.creates.start(referrals)
        dispatcher.start()
        messaging.start()
        if deadlines is not None:
            deadlines.start()  # it waits for NATS, then for the lease
        try:
            yield
        finally:
            await referrals.creates.stop()
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
    # A partner's outcome report carries a PDF (up to 5 MB, base64): 10 MiB there.
    install_input_guard(
        app, settings, RouteLimit("POST", r"/v1/partner/referrals/[^/]+/complete", 10 * 1024 * 1024)
    )
    api.install_routes(app, referrals, Authenticator(uow.sessions, settings.admin_api_key))

    def scheduler_role() -> dict[str, Any]:
        # Informative: a standby is as ready as the leader.
        if deadlines is None:
            return {}
        return {"scheduler": "active" if deadlines.active else "standby"}

    add_ops_routes(app, engine, messaging, scheduler_role)

    return app
