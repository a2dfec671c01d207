"""Reminders' composition root: database, broker, consumers, outbox relay, the scheduler
lease, and the HTTP app.

Every instance consumes events (durable pull consumers share the work; the inbox makes
each event count once), relays its outbox and answers webhooks. Only the instance that
holds the lease runs the scheduler and the planner; the others wait to take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import FastAPI
from faststream.nats import NatsBroker

from services.reminders import api, delivery, jobs, planning, usecases
from services.reminders.aftercare import AftercareLibrary
from services.reminders.gate import Gate, gated_sessionmaker
from services.reminders.links import Links
from services.reminders.migrate import upgrade
from services.reminders.scheduler import build_scheduler
from services.reminders.sender import Sender
from services.reminders.settings import RemindersSettings
from shared import events
from shared.auth import Authenticator
from shared.broker import (
    Consumer,
    jetstream,
)
from shared.db import create_engine, is_sqlite
from shared.http import install_input_guard
from shared.lease import Lease
from shared.outbox import OutboxRelay
from shared.service import Messaging, add_ops_routes

log = structlog.get_logger(__name__)

#: Libraries that log a line per request or job at INFO (twilio's with the query string,
#: which for a look-up carries a phone number): warnings only.
for _noisy in ("twilio", "apscheduler"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


@dataclass
class Runtime:
    """What the lifespan starts and stops; tests reach in here to look."""

    settings: RemindersSettings
    reminders: usecases.Reminders
    broker: NatsBroker
    relay: OutboxRelay
    consumers: list[Consumer]
    nats_ready: asyncio.Event
    lease: Lease | None = None
    role: str = "starting"
    became_active: asyncio.Event = field(default_factory=asyncio.Event)


def build_consumers(app: usecases.Reminders, settings: RemindersSettings) -> list[Consumer]:
    async def on_session(session: Any, event: events.CloudEvent[Any]) -> None:
        await usecases.apply_session_event(session, event)

    async def on_client(session: Any, event: events.CloudEvent[Any]) -> None:
        await usecases.apply_client_event(session, event)

    async def on_referral(session: Any, event: events.CloudEvent[Any]) -> None:
        await usecases.apply_referral_event(session, event)

    common: dict[str, Any] = {
        "service": "reminders",
        "max_deliver": settings.max_deliver,
        "retry_base_seconds": settings.retry_base_seconds,
        "after_commit": app.wake_planner,
    }
    return [
        Consumer(
            purpose="sessions",
            stream=events.BOOKING_STREAM,
            subject="booking.session.>",
            handler=on_session,
            **common,
        ),
        Consumer(
            purpose="clients",
            stream=events.BOOKING_STREAM,
            subject="booking.client.>",
            handler=on_client,
            **common,
        ),
        Consumer(
            purpose="referrals",
            stream=events.REFERRALS_STREAM,
            subject="referrals.referral.>",
            handler=on_referral,
            **common,
        ),
    ]


async def _lead(runtime: Runtime) -> None:
    """Wait for the lease; while it is held, be the one scheduler."""
    await runtime.nats_ready.wait()
    app = runtime.reminders
    lease = Lease(
        jetstream(runtime.broker),
        key="reminders-scheduler",
        ttl_seconds=runtime.settings.scheduler_lease_seconds,
    )
    runtime.lease = lease
    while True:
        runtime.role = "standby"
        await lease.acquire()
        keeper = asyncio.create_task(lease.keep(), name="lease-keeper")
        planner: asyncio.Task[None] | None = None
        try:
            scheduler = build_scheduler(
                app.gate,
                runtime.settings.database_url,
                on_missed=lambda job_id, at: delivery.on_job_missed(app, job_id, at),
                jobs_per_pass=runtime.settings.scheduler_jobs_per_pass,
            )
            app.scheduler = scheduler
            app.is_active = lambda: lease.held
            jobs.bind(app)
            await delivery.reconcile_in_flight(app)
            async with app.gate.exclusive():
                scheduler.start()
            await planning.repair_jobs(app)
            planner = asyncio.create_task(planning.run_planner(app), name="planner")
            runtime.role = "active"
            runtime.became_active.set()
            log.info("scheduler.active", holder=lease.holder)
            await lease.lost.wait()
            log.warning("scheduler.standing_down", holder=lease.holder)
        finally:
            runtime.role = "standby"
            runtime.became_active.clear()
            app.is_active = lambda: False
            for task in (planner, keeper):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if app.scheduler is not None:
                await app.scheduler.stop()
                app.scheduler = None
            jobs.bind(None)
            await lease.release()


def create_app(settings: RemindersSettings | None = None) -> FastAPI:
    settings = settings or RemindersSettings()
    engine = create_engine(settings.database_url)
    gate = Gate(enabled=is_sqlite(engine))
    sessions = gated_sessionmaker(engine, gate)
    messaging = Messaging(
        "reminders", settings.nats_url, sessions, outbox_poll_seconds=settings.outbox_poll_seconds
    )
    broker, relay = messaging.broker, messaging.relay
    library = AftercareLibrary(settings.aftercare_dir)
    library.load()  # a broken aftercare file stops the start, with the file named
    links = Links(
        settings.reminders_link_secret, settings.base_url, settings.aftercare_link_days * 86400
    )
    reminders = usecases.Reminders(
        settings=settings,
        sessions=sessions,
        gate=gate,
        sender=None,  # type: ignore[arg-type]  # made in the lifespan, inside the event loop
        links=links,
        aftercare=library,
        on_commit=relay.wake,
    )
    messaging.add_consumers(build_consumers(reminders, settings))
    runtime = Runtime(settings, reminders, broker, relay, messaging.consumers, messaging.ready)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await asyncio.to_thread(upgrade, settings.database_url)
        reminders.sender = Sender(settings)
        reminders.planner_wakeup = asyncio.Event()
        reminders.batch.start()
        messaging.start()
        leading = asyncio.create_task(_lead(runtime), name="scheduler-lease")
        try:
            yield
        finally:
            leading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leading
            await reminders.batch.stop()
            await messaging.stop()
            await reminders.sender.close()
            await engine.dispose()

    app = FastAPI(
        title="Clinic reminders",
        version="1.0.0",
        description="Texts clients about their sessions over Twilio: rules, schedule, "
        "consent, replies, delivery status, aftercare pages.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    api.install_error_handlers(app)
    install_input_guard(app, settings)
    authenticate = Authenticator(sessions, settings.admin_api_key)
    app.include_router(api.build_router(reminders, authenticate))

    # The role is informative: a standby is as ready as the active scheduler.
    add_ops_routes(app, engine, messaging, lambda: {"role": runtime.role})

    return app
