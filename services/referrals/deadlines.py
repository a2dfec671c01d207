"""Referral deadlines: APScheduler 3 jobs, run by one active scheduler behind a NATS KV lease.

A referral waiting for its partner's answer gets two jobs with deterministic ids:
``<referral_id>:accept-reminder`` at ``remind_at`` and ``<referral_id>:expire`` at
``expire_at``. A job carries ids only; when it fires it re-reads the referral and acts only
if it is still unanswered (an accepted referral's jobs fire and do nothing).

Any replica may send a referral, but only the process holding the lease runs a scheduler
(a job store is never shared by two schedulers). The referral row records whether its
jobs exist (``deadlines_scheduled``); the active scheduler plans the missing ones when it
is woken after a commit, every few seconds, and when it takes over.

Misfire policy: a reminder that is late (the process was down) is still sent until the
expiry is due, then it is pointless; an expiry runs however late (coalesced).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from nats.js.client import JetStreamContext
from sqlalchemy import Engine, create_engine, event

from services.referrals import usecases
from services.referrals.usecases import DeadlinePlan
from shared.lease import Lease

log = structlog.get_logger(__name__)

REMINDER = "accept-reminder"
EXPIRY = "expire"
#: The persisted reference of every deadline job; :class:`DeadlineExecutor` binds it.
JOB_FUNC = "services.referrals.deadlines:deadline_due"

Handler = Callable[[str, str], Awaitable[None]]


async def deadline_due(kind: str, referral_id: str) -> None:
    """What a stored job names. Jobs run through :class:`DeadlineExecutor`, never this."""
    raise RuntimeError(f"deadline job {referral_id}:{kind} ran outside the DeadlineExecutor")


def job_id(referral_id: str, kind: str) -> str:
    return f"{referral_id}:{kind}"


class _BoundJob:
    """A job as the executor sees it, with its function bound to this process's runtime."""

    def __init__(self, job: Any, func: Handler) -> None:
        self._job = job
        self.func = func

    def __getattr__(self, name: str) -> Any:
        return getattr(self._job, name)

    def __str__(self) -> str:
        return str(self._job)


class DeadlineExecutor(AsyncIOExecutor):
    """Runs stored deadline jobs with this process's use cases.

    A persistent job must name a module-level function; which database and which outbox it
    acts on is a property of the process, not of the stored job, so it is bound here.
    """

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self._handler = handler

    def _do_submit_job(self, job: Any, run_times: Any) -> None:
        super()._do_submit_job(_BoundJob(job, self._handler), run_times)


def jobstore_engine(url: str) -> Engine:
    """A blocking engine for the job store; SQLite in WAL with NORMAL sync (see PITFALLS)."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


class DeadlineScheduler:
    """Waits for the lease, then runs the one AsyncIOScheduler and keeps its jobs planned."""

    def __init__(
        self,
        app: usecases.Referrals,
        *,
        jobstore_url: str,
        jetstream: Callable[[], JetStreamContext],
        lease_bucket: str,
        lease_key: str,
        lease_ttl_seconds: int,
        poll_seconds: float,
    ) -> None:
        self._app = app
        self._jobstore_url = jobstore_url
        self._jetstream = jetstream
        self._lease_bucket = lease_bucket
        self._lease_key = lease_key
        self._lease_ttl = lease_ttl_seconds
        self._poll = poll_seconds
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lease: Lease | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._engine: Engine | None = None
        self.fired: list[str] = []

    @property
    def leader(self) -> bool:
        return self._scheduler is not None

    def wake(self) -> None:
        """A commit may have sent a referral: plan its deadlines soon."""
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="deadline-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._stop_scheduler()
        if self._lease is not None:
            await self._lease.release()

    # -- leadership -------------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                if self._lease is None:
                    self._lease = Lease(
                        self._jetstream(),
                        bucket=self._lease_bucket,
                        key=self._lease_key,
                        ttl_seconds=self._lease_ttl,
                    )
                if await self._lease.try_acquire():
                    await self._lead(self._lease)
                    delay = 0.5
                    continue
                await asyncio.sleep(self._lease.renew_every_seconds)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "scheduler.lease_error", error=f"{type(exc).__name__}: {exc}", retry_in=delay
                )
                self._stop_scheduler()
                if self._lease is not None and self._lease.held:
                    with contextlib.suppress(Exception):
                        await self._lease.release()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _lead(self, lease: Lease) -> None:
        """Run the scheduler while the lease holds; return when it is lost.

        Renewal runs in its own task, so however long planning takes it never starves.
        """
        self._start_scheduler()
        log.info("scheduler.active", holder=lease.holder)
        keeper = asyncio.create_task(lease.keep(), name="scheduler-lease-keeper")
        self._wakeup.set()  # plan whatever the previous holder left unplanned
        try:
            while not keeper.done():
                if self._wakeup.is_set():
                    self._wakeup.clear()
                    if await self._plan_missing():
                        self._wakeup.set()  # a full batch: there may be more
                        await asyncio.sleep(0)
                        continue
                waiter = asyncio.create_task(self._wakeup.wait())
                done, _ = await asyncio.wait(
                    {keeper, waiter}, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                if not done:
                    self._wakeup.set()  # the poll: look again anyway
        finally:
            if not keeper.done():
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            self._stop_scheduler()
            log.info("scheduler.standby", holder=lease.holder)
        failure = keeper.exception()
        if failure is not None:
            raise failure

    def _start_scheduler(self) -> None:
        self._engine = jobstore_engine(self._jobstore_url)
        scheduler = AsyncIOScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self._engine)},
            executors={"default": DeadlineExecutor(self._on_deadline)},
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone="UTC",
        )
        scheduler.start()
        self._scheduler = scheduler

    def _stop_scheduler(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=False)
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    # -- jobs -------------------------------------------------------------------------

    async def _plan_missing(self, batch: int = 200) -> bool:
        """Put the missing jobs of one batch of referrals in the store; ``True`` if full."""
        plans = await usecases.unplanned_deadlines(self._app, limit=batch)
        if not plans or self._scheduler is None:
            return False
        # The job store is blocking I/O: keep it off the event loop.
        await asyncio.to_thread(self._add_jobs, self._scheduler, plans)
        await usecases.mark_deadlines_planned(self._app, [p.referral_id for p in plans])
        log.debug("scheduler.planned", referrals=len(plans))
        return len(plans) == batch

    def _add_jobs(self, scheduler: AsyncIOScheduler, plans: Sequence[DeadlinePlan]) -> None:
        late_reminder_seconds = int(self._app.expire_after_hours * 3600)
        for plan in plans:
            scheduler.add_job(
                JOB_FUNC,
                trigger=DateTrigger(run_date=plan.remind_at),
                args=[REMINDER, plan.referral_id],
                id=job_id(plan.referral_id, REMINDER),
                replace_existing=True,
                misfire_grace_time=max(late_reminder_seconds, 1),
            )
            scheduler.add_job(
                JOB_FUNC,
                trigger=DateTrigger(run_date=plan.expire_at),
                args=[EXPIRY, plan.referral_id],
                id=job_id(plan.referral_id, EXPIRY),
                replace_existing=True,
                misfire_grace_time=None,
            )

    async def _on_deadline(self, kind: str, referral_id: str) -> None:
        if kind == REMINDER:
            acted = await usecases.remind_partner(self._app, referral_id)
        elif kind == EXPIRY:
            acted = await usecases.expire_referral(self._app, referral_id)
        else:
            log.error("scheduler.unknown_job", kind=kind, referral_id=referral_id)
            return
        self.fired.append(job_id(referral_id, kind))
        log.info("scheduler.deadline", kind=kind, referral_id=referral_id, acted=acted)

    def pending_jobs(self) -> list[str]:
        """Ids of the jobs in the store (the active scheduler only; tests and ops look)."""
        if self._scheduler is None:
            return []
        return [job.id for job in self._scheduler.get_jobs()]
