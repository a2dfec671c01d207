"""Reminders' composition root: the context, the broker and its consumers, the outbox
relay, the leased scheduler with the planner, and the HTTP app, built in one place.

Every instance consumes events (durable pull consumers share the work; the inbox makes
each event count once), relays its outbox, answers webhooks and sends: the texts due
wait in the ``reminders.due`` work queue, and every instance takes from it, at one pace
per sender shared through NATS KV (``pacing``). Only the instance that holds the lease runs
the scheduler and the planner, which decide what is due; the others wait to take over.

The path of a message: a consumer marks a session for planning and wakes the planner
(``consumers``); the planner puts jobs in the store (``planning``); a job fires
(``firing``): decide, claim the ledger row and queue it (``ledger``); any instance sends it
(``transmit``); Twilio's callbacks move its status (``status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import structlog
from fastapi import FastAPI
from nats.js.kv import KeyValue

from services.reminders import api, db, firing, planning, transmit, waitlist
from services.reminders.aftercare import AftercareLibrary
from services.reminders.batch import GroupCommit, Reads
from services.reminders.consumers import build_consumers
from services.reminders.context import PLANNER, Reminders
from services.reminders.jobs import REFERRAL_JOB, SESSION_JOB, WAITLIST_JOB
from services.reminders.links import Links
from services.reminders.migrate import upgrade
from services.reminders.pacing import PACE_BUCKET, SharedRateLimiter
from services.reminders.rules import RulesCache
from services.reminders.sender import Sender
from services.reminders.settings import RemindersSettings
from shared import events
from shared.auth import Authenticator
from shared.broker import jetstream
from shared.consumers import Consumer
from shared.db import create_engine
from shared.errors import install_error_handlers
from shared.http import install_input_guard
from shared.lease import ensure_lease_bucket
from shared.phones import InvalidPhone
from shared.scheduling import JobStoreConfig, LeasedScheduler
from shared.service import Messaging, add_ops_routes
from shared.uow import UnitOfWork
from shared.worker import Worker

log = structlog.get_logger(__name__)

#: The lease the active instance holds (its name is part of the deployment: keep it).
SCHEDULER_LEASE = "reminders-scheduler"

#: Libraries that log a line per request or job at INFO (twilio's with the query string,
#: which for a look-up carries a phone number): warnings only.
for _noisy in ("twilio", "apscheduler"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


@dataclass
class Runtime:
    """What the lifespan starts and stops; tests reach in here to look."""

    settings: RemindersSettings
    reminders: Reminders
    messaging: Messaging
    planner: Worker

    @property
    def scheduler(self) -> LeasedScheduler:
        return self.reminders.scheduler

    @property
    def role(self) -> str:
        """``active`` (holds the lease), ``standby`` or ``starting``."""
        return self.scheduler.role


def bootstrap(settings: RemindersSettings) -> Runtime:
    """Build the service whole. The scheduler's hooks name ``reminders``, bound below:
    they run only once the scheduler has started, long after this returns."""
    engine = create_engine(settings.database_url)
    uow = UnitOfWork(engine)
    messaging = Messaging(
        "reminders",
        settings.nats_url,
        uow,
        outbox_poll_seconds=settings.outbox_poll_seconds,
        replicas=settings.nats_replicas,
    )
    library = AftercareLibrary(settings.aftercare_dir)
    library.load()  # a broken aftercare file stops the start, with the file named
    links = Links(
        settings.reminders_link_secret, settings.base_url, settings.aftercare_link_days * 86400
    )

    async def session_job(session_id: str, rule: str) -> None:
        async with reminders.job_slots:
            await firing.send_session_message(reminders, session_id, rule)

    async def referral_job(notice_id: str) -> None:
        async with reminders.job_slots:
            await firing.send_referral_update(reminders, notice_id)

    async def waitlist_job(offer_id: str, what: str) -> None:
        async with reminders.job_slots:
            await waitlist.send_waitlist_text(reminders, offer_id, what)

    async def on_missed(job_id: str, scheduled: datetime) -> None:
        await firing.on_job_missed(reminders, job_id, scheduled)

    async def on_active() -> None:
        await transmit.reconcile_orphans(reminders)
        await planning.repair_jobs(reminders)
        planner.start()

    async def on_standby() -> None:
        await planner.stop()

    scheduler = LeasedScheduler(
        key=SCHEDULER_LEASE,
        gate=uow.gate,
        jetstream=lambda: jetstream(messaging.broker),
        connected=messaging.ready,
        lease_ttl_seconds=settings.scheduler_lease_seconds,
        store=JobStoreConfig(
            settings.database_url, db.JOBS_TABLE, max_due=settings.scheduler_jobs_per_pass
        ),
        handlers={
            SESSION_JOB: session_job,
            REFERRAL_JOB: referral_job,
            WAITLIST_JOB: waitlist_job,
        },
        on_active=on_active,
        on_standby=on_standby,
        on_missed=on_missed,
        # A job re-planned while an earlier run of it still waits for a send slot must run
        # too (its message may have changed); the ledger key keeps a repeat harmless.
        job_defaults={"coalesce": True, "max_instances": 4},
    )
    reminders = Reminders(
        settings=settings,
        uow=uow,
        sender=Sender(settings),
        links=links,
        aftercare=library,
        scheduler=scheduler,
        batch=GroupCommit(uow.write),
        reads=Reads(uow.read),
        rules=RulesCache(settings),
    )
    planner = Worker(
        "planner",
        lambda: planning.plan_step(reminders),
        poll_seconds=settings.planner_poll_seconds,
        backoff_seconds=1.0,
    )
    uow.on_commit(PLANNER, planner.wake)
    messaging.add_consumers(build_consumers(settings))
    messaging.add_consumers(
        [
            Consumer.task_of(
                events.REMINDERS_SENDERS,
                lambda event, delivered: transmit.send_due(reminders, event, delivered),
                max_deliver=settings.sms_queue_max_deliver,
                ack_wait_seconds=settings.sms_queue_ack_wait_seconds,
                retry_base_seconds=settings.retry_base_seconds,
                batch_size=settings.sms_pull_batch,
            )
        ]
    )

    async def pace_bucket() -> KeyValue:
        # The bucket named after the service: its NATS user may write there (natsauth).
        js = jetstream(messaging.broker)
        if not pace_bucket_ready.is_set():
            await ensure_lease_bucket(js, replicas=settings.nats_replicas, bucket=PACE_BUCKET)
            pace_bucket_ready.set()
        return await js.key_value(PACE_BUCKET)

    pace_bucket_ready = asyncio.Event()

    reminders.sender.share_pace(
        lambda sender, per_second: SharedRateLimiter(pace_bucket, sender, per_second)
    )
    return Runtime(settings, reminders, messaging, planner)


def create_app(settings: RemindersSettings | None = None) -> FastAPI:
    settings = settings or RemindersSettings()
    runtime = bootstrap(settings)
    reminders, messaging = runtime.reminders, runtime.messaging
    engine = reminders.uow.engine

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await asyncio.to_thread(upgrade, settings.database_url)
        reminders.sender.open()
        reminders.batch.start()
        messaging.start()
        reminders.scheduler.start()
        try:
            yield
        finally:
            await reminders.scheduler.stop()
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
    install_error_handlers(app, others={InvalidPhone: 422})
    install_input_guard(app, settings)
    authenticate = Authenticator(reminders.uow.sessions, settings.admin_api_key)
    app.include_router(api.build_router(reminders, authenticate))

    # The role is informative: a standby is as ready as the active scheduler.
    add_ops_routes(app, engine, messaging, lambda: {"role": runtime.role})

    return app
