"""Booking's composition root: database, broker, consumers, outbox relay and the HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import FastAPI
from faststream.nats import NatsBroker

from services.booking import api, usecases
from services.booking.calendar_secrets import box_for
from services.booking.calendar_sync import CalendarSync, SyncTimings
from services.booking.migrate import upgrade
from services.booking.settings import BookingSettings
from shared import events
from shared.auth import Authenticator
from shared.broker import (
    Consumer,
)
from shared.db import create_engine, sessionmaker_for
from shared.events import CloudEvent
from shared.http import install_input_guard
from shared.outbox import OutboxRelay
from shared.process import freeze_startup_heap
from shared.service import Messaging, add_ops_routes

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    """What the lifespan starts and stops; tests reach in here to look."""

    settings: BookingSettings
    booking: usecases.Booking
    broker: NatsBroker
    relay: OutboxRelay
    consumers: list[Consumer]
    calendar: CalendarSync
    nats_ready: asyncio.Event


def build_consumers(
    booking: usecases.Booking, settings: BookingSettings, calendar: CalendarSync
) -> list[Consumer]:
    async def on_reply(session: Any, event: CloudEvent[Any]) -> None:
        await usecases.apply_reply(session, event, booking.clock())

    async def on_consent(session: Any, event: CloudEvent[Any]) -> None:
        await usecases.apply_consent(session, event, booking.clock())

    common: dict[str, Any] = {
        "service": "booking",
        "stream": events.REMINDERS_STREAM,
        "max_deliver": settings.max_deliver,
        "retry_base_seconds": settings.retry_base_seconds,
        "after_commit": booking.on_commit,
    }
    consumers = [
        Consumer(purpose="replies", subject=events.REPLY_RECEIVED, handler=on_reply, **common),
        Consumer(purpose="consent", subject=events.CONSENT_CHANGED, handler=on_consent, **common),
    ]
    if settings.calendar_sync_enabled:
        # Our own session events, to write them into linked CalDAV calendars.
        consumers.append(
            Consumer(
                purpose="caldav",
                subject="booking.session.*",
                handler=calendar.on_session_event,
                **{
                    **common,
                    "stream": events.BOOKING_STREAM,
                    "after_commit": calendar.wake_if_marked,
                },
            )
        )
    return consumers


def create_app(settings: BookingSettings | None = None) -> FastAPI:
    settings = settings or BookingSettings()
    engine = create_engine(settings.database_url)
    sessions = sessionmaker_for(engine)
    messaging = Messaging(
        "booking", settings.nats_url, sessions, outbox_poll_seconds=settings.outbox_poll_seconds
    )
    relay = messaging.relay
    booking = usecases.Booking(
        sessions=sessions, default_phone_region=settings.default_phone_region, on_commit=relay.wake
    )
    box = box_for(
        settings.secret_keys(),
        production=settings.app_env == "production",
        uses_dev_key=settings.secret_key_is_dev_value,
    )
    calendar = CalendarSync(booking, box, SyncTimings.from_settings(settings))
    messaging.add_consumers(build_consumers(booking, settings, calendar))
    runtime = Runtime(
        settings, booking, messaging.broker, relay, messaging.consumers, calendar, messaging.ready
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await asyncio.to_thread(upgrade, settings.database_url)
        if not box.usable:
            log.warning("calendar_passwords.disabled", reason="BOOKING_SECRET_KEY")
        if settings.calendar_sync_enabled:
            calendar.start()
        messaging.start()
        freeze_startup_heap()
        try:
            yield
        finally:
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
    api.install_error_handlers(app)
    install_input_guard(app, settings)
    authenticate = Authenticator(sessions, settings.admin_api_key)
    app.include_router(api.build_router(booking, authenticate, settings.base_url, calendar))

    add_ops_routes(app, engine, messaging)

    return app
