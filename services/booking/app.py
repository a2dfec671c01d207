"""Booking's composition root: database, broker, consumers, outbox relay and the HTTP app."""

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

from services.booking import api, usecases
from services.booking.calendar_secrets import box_for
from services.booking.calendar_sync import CalendarSync, SyncTimings
from services.booking.migrate import upgrade
from services.booking.settings import BookingSettings
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
from shared.process import freeze_startup_heap

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
    nats_ready: asyncio.Event = field(default_factory=asyncio.Event)


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
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("nats.unavailable", error=f"{type(exc).__name__}: {exc}", retry_in=delay)
            with contextlib.suppress(Exception):
                await runtime.broker.stop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def create_app(settings: BookingSettings | None = None) -> FastAPI:
    settings = settings or BookingSettings()
    engine = create_engine(settings.database_url)
    sessions = sessionmaker_for(engine)
    broker = make_broker(settings.nats_url, "booking")

    async def publish(subject: str, payload: bytes, msg_id: str) -> None:
        if not runtime.nats_ready.is_set():
            raise ConnectionError("NATS is not connected yet")
        await publish_raw(jetstream(broker), subject, payload, msg_id)

    relay = OutboxRelay(sessions, publish, poll_seconds=settings.outbox_poll_seconds)
    booking = usecases.Booking(
        sessions=sessions, default_phone_region=settings.default_phone_region, on_commit=relay.wake
    )
    box = box_for(
        settings.secret_keys(),
        production=settings.app_env == "production",
        uses_dev_key=settings.secret_key_is_dev_value,
    )
    calendar = CalendarSync(booking, box, SyncTimings.from_settings(settings))
    consumers = build_consumers(booking, settings, calendar)
    for consumer in consumers:
        register_consumer(broker, consumer, sessions)
    runtime = Runtime(settings, booking, broker, relay, consumers, calendar)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await asyncio.to_thread(upgrade, settings.database_url)
        relay.start()
        if not box.usable:
            log.warning("calendar_passwords.disabled", reason="BOOKING_SECRET_KEY")
        if settings.calendar_sync_enabled:
            calendar.start()
        connecting = asyncio.create_task(_connect_when_possible(runtime))
        freeze_startup_heap()
        try:
            yield
        finally:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
            await calendar.stop()
            await relay.stop()
            with contextlib.suppress(Exception):
                await broker.stop()
            await engine.dispose()

    app = FastAPI(
        title="Clinic booking",
        version="1.0.0",
        description="Locations, rooms, therapists, treatments, clients, availability and sessions.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    api.install_error_handlers(app)
    authenticate = Authenticator(sessions, settings.admin_api_key)
    app.include_router(api.build_router(booking, authenticate, settings.base_url, calendar))

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
        return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
