"""Booking's composition root: database, unit of work, broker, consumers, outbox relay,
calendar sync and the HTTP app, built whole here and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from fastapi import FastAPI
from faststream.nats import NatsBroker
from sqlalchemy.ext.asyncio import AsyncSession

from services.booking import api
from services.booking.api.common import ApiContext
from services.booking.calendar import push
from services.booking.calendar.context import SyncTimings
from services.booking.calendar.sync import CalendarSync
from services.booking.manage import routes as manage_routes
from services.booking.manage.links import ManageLinks
from services.booking.migrate import upgrade
from services.booking.settings import BookingSettings
from services.booking.usecases import Booking, replies
from services.booking.waitlist.lapses import Lapses
from services.booking.waitlist.offers import LAPSES
from shared import events
from shared.auth import Authenticator
from shared.broker import jetstream
from shared.consumers import Consumer
from shared.db import create_engine
from shared.errors import install_error_handlers
from shared.events import CloudEvent
from shared.http import install_input_guard
from shared.inbox import claim
from shared.outbox import OutboxRelay
from shared.phones import InvalidPhone
from shared.process import freeze_startup_heap
from shared.secretbox import box_for
from shared.service import Messaging, add_ops_routes
from shared.uow import UnitOfWork

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    """What the lifespan starts and stops; tests reach in here to look."""

    settings: BookingSettings
    uow: UnitOfWork
    booking: Booking
    broker: NatsBroker
    relay: OutboxRelay
    consumers: list[Consumer]
    calendar: CalendarSync
    nats_ready: asyncio.Event
    lapses: Lapses


def build_consumers(booking: Booking, settings: BookingSettings) -> list[Consumer]:
    async def on_reply(session: AsyncSession, event: CloudEvent[events.ReplyReceived]) -> None:
        await replies.apply_reply(booking, session, event.data)

    async def on_consent(session: AsyncSession, event: CloudEvent[events.ConsentChanged]) -> None:
        await replies.apply_consent(session, event.data, event.time, booking.clock())

    common: dict[str, Any] = {
        "service": "booking",
        "stream": events.REMINDERS_STREAM,
        "max_deliver": settings.max_deliver,
        "retry_base_seconds": settings.retry_base_seconds,
    }
    consumers = [
        Consumer(purpose="replies", subject=events.REPLY_RECEIVED, handler=on_reply, **common),
        Consumer(purpose="consent", subject=events.CONSENT_CHANGED, handler=on_consent, **common),
    ]
    if settings.calendar_sync_enabled:
        consumers.append(caldav_consumer(booking, common))
    return consumers


def caldav_consumer(booking: Booking, common: dict[str, Any]) -> Consumer:
    """Our own session events, to write them into linked CalDAV calendars.

    Most clinics link no calendar: then an event has nothing to do, and the consumer says
    so after one read, before opening a write transaction (which on SQLite waits for the
    bookings' write lock) and without an inbox row (doing nothing twice is harmless); the
    events of one fetched batch share that read (``push.PushLinkProbe``). A link created
    meanwhile is reconciled whole when created, so nothing is missed.
    Otherwise the event is applied once, with its inbox row, as a handler would be.
    """

    async def no_handler(_session: AsyncSession, _event: CloudEvent[Any]) -> None:
        raise AssertionError("the caldav consumer runs as a task")

    probe = push.PushLinkProbe(booking.uow)

    async def on_session(event: CloudEvent[events.SessionEvent], _delivered: int) -> None:
        if not await probe.any():
            return
        async with booking.uow.write() as session:
            if await claim(session, consumer.durable, event.id):
                await push.mark_session(session, event.data, booking.clock())

    consumer: Consumer = Consumer(
        purpose="caldav",
        subject="booking.session.*",
        handler=no_handler,
        task=on_session,
        **{**common, "stream": events.BOOKING_STREAM},
    )
    return consumer


def create_app(settings: BookingSettings | None = None) -> FastAPI:
    settings = settings or BookingSettings()
    engine = create_engine(settings.database_url)
    uow = UnitOfWork(engine)
    messaging = Messaging(
        "booking",
        settings.nats_url,
        uow,
        outbox_poll_seconds=settings.outbox_poll_seconds,
        replicas=settings.nats_replicas,
    )
    # The client's page: no links in production while the development key is in force
    # (anyone could sign them).
    links = ManageLinks(
        settings.secret_keys(),
        settings.base_url,
        enabled=settings.app_env != "production" or not settings.secret_key_is_dev_value,
    )
    booking = Booking(
        uow,
        default_phone_region=settings.default_phone_region,
        manage_url=links.url,
        offer_ttl=timedelta(seconds=settings.waitlist_offer_seconds),
    )
    box = box_for(
        settings.secret_keys(),
        setting="BOOKING_SECRET_KEY",
        production=settings.app_env == "production",
        uses_dev_key=settings.secret_key_is_dev_value,
    )
    calendar = CalendarSync(
        uow,
        box,
        SyncTimings.from_settings(settings),
        enabled=settings.calendar_sync_enabled,
        jetstream=lambda: jetstream(messaging.broker),
        connected=messaging.ready,
        lease_ttl_seconds=settings.calendar_lease_seconds,
    )
    lapses = Lapses(
        booking,
        jetstream=lambda: jetstream(messaging.broker),
        connected=messaging.ready,
        lease_ttl_seconds=settings.waitlist_lease_seconds,
        poll_seconds=settings.waitlist_poll_seconds,
    )
    uow.on_commit(LAPSES, lapses.wake)
    messaging.add_consumers(build_consumers(booking, settings))
    runtime = Runtime(
        settings,
        uow,
        booking,
        messaging.broker,
        messaging.relay,
        messaging.consumers,
        calendar,
        messaging.ready,
        lapses,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await asyncio.to_thread(upgrade, settings.database_url)
        if not box.usable:
            log.warning("calendar_passwords.disabled", reason="BOOKING_SECRET_KEY")
        calendar.start()
        messaging.start()
        lapses.start()
        freeze_startup_heap()
        try:
            yield
        finally:
            await lapses.stop()
            await calendar.stop()
            await messaging.stop()
            await engine.dispose()

    app = FastAPI(
        title="Clinic booking",
        version="1.0.0",
        description="Locations, rooms, therapists, treatments, clients, availability and sessions.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app, others={InvalidPhone: 422})
    install_input_guard(app, settings)
    authenticate = Authenticator(uow.sessions, settings.admin_api_key)
    app.include_router(
        api.build_router(ApiContext(booking, calendar.links, authenticate, settings.base_url))
    )
    app.include_router(manage_routes.router(booking, links))

    add_ops_routes(app, engine, messaging)

    return app
