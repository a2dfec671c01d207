"""APScheduler 3 on our terms: ``AsyncIOScheduler`` + ``SQLAlchemyJobStore`` in the reminders
database, job store work behind the :class:`~services.reminders.gate.Gate`, and the job
functions as importable references that carry ids only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.job import Job
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.util import datetime_to_utc_timestamp
from sqlalchemy import Engine, create_engine, event, select

from services.reminders.db import JOBS_TABLE
from shared.db import sync_url
from shared.gate import Gate

log = structlog.get_logger(__name__)

SESSION_JOB = "services.reminders.jobs:send_session_message"
REFERRAL_JOB = "services.reminders.jobs:send_referral_update"


def session_job_id(session_id: str, rule: str) -> str:
    """Deterministic: a replayed event or a re-plan replaces the job, never duplicates it."""
    return f"{session_id}:{rule}"


def referral_job_id(notice_id: str) -> str:
    """``<referral_id>:referral_<status>`` (notice ids are ``<referral_id>:<status>``)."""
    referral_id, status = notice_id.rsplit(":", 1)
    return f"{referral_id}:referral_{status}"


def job_store_engine(database_url: str) -> Engine:
    """A blocking engine for the job store; on SQLite with WAL and ``synchronous=NORMAL``
    (a job write then costs well under a millisecond instead of an fsync)."""
    url = sync_url(database_url)
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


class ChunkedJobStore(SQLAlchemyJobStore):
    """Hands out at most ``max_due`` due jobs per look.

    ``_process_jobs`` runs synchronously on the event loop and removes each job it starts
    in a transaction of its own; ten thousand jobs due at once would block the loop for
    seconds (about 14 s on PostgreSQL), long enough to lose the lease. With a cap the
    scheduler sees that the next job is already due and wakes again at once, so the loop
    serves everything else between chunks.
    """

    def __init__(self, *args: Any, max_due: int = 200, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_due = max_due

    def get_due_jobs(self, now: datetime) -> list[Job]:
        timestamp = datetime_to_utc_timestamp(now)
        query = (
            select(self.jobs_t.c.id, self.jobs_t.c.job_state)
            .where(self.jobs_t.c.next_run_time <= timestamp)
            .order_by(self.jobs_t.c.next_run_time)
            .limit(self.max_due)
        )
        jobs: list[Job] = []
        broken: list[str] = []
        with self.engine.begin() as connection:
            for row in connection.execute(query):
                try:
                    jobs.append(self._reconstitute_job(row.job_state))
                except Exception:
                    log.exception("job.unreadable", job=row.id)
                    broken.append(row.id)
            if broken:
                connection.execute(self.jobs_t.delete().where(self.jobs_t.c.id.in_(broken)))
        return jobs


class GatedScheduler(AsyncIOScheduler):
    """Processes due jobs only inside :meth:`Gate.exclusive`, and coalesces wake-ups (one
    per batch of added jobs instead of one per job)."""

    def __init__(self, gate: Gate, **options: Any) -> None:
        self.gate = gate
        self._processing: asyncio.Task[None] | None = None
        self._again = False
        super().__init__(**options)

    def wakeup(self) -> None:
        loop = self._eventloop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._schedule_processing)

    def _schedule_processing(self) -> None:
        if self._processing is not None and not self._processing.done():
            self._again = True
            return
        if self._eventloop is None:
            return
        self._processing = self._eventloop.create_task(self._process(), name="scheduler-wakeup")

    async def _process(self) -> None:
        while True:
            self._again = False
            async with self.gate.exclusive():
                if not self.running or self._eventloop is None:
                    return
                self._stop_timer()
                wait_seconds = self._process_jobs()
                self._start_timer(wait_seconds)
            if not self._again:
                return

    async def stop(self) -> None:
        """Shut down without waiting for running jobs (they check the lease themselves)."""
        if self._processing is not None:
            self._processing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._processing
        if self.running:
            async with self.gate.exclusive():
                # BaseScheduler.shutdown directly: AsyncIOScheduler's defers to call_soon.
                super(AsyncIOScheduler, self).shutdown(wait=False)
                self._stop_timer()
                self._eventloop = None


def build_scheduler(
    gate: Gate,
    database_url: str,
    on_missed: Callable[[str, datetime], Coroutine[Any, Any, None]],
    jobs_per_pass: int = 200,
) -> GatedScheduler:
    """A scheduler on the reminders database; ``on_missed`` hears of jobs run too late."""
    store = ChunkedJobStore(
        engine=job_store_engine(database_url), tablename=JOBS_TABLE, max_due=jobs_per_pass
    )
    scheduler = GatedScheduler(
        gate,
        jobstores={"default": store},
        # A job re-planned while an earlier run of it still waits for a send slot must run
        # too (its message may have changed); the ledger key keeps a repeat harmless.
        job_defaults={"coalesce": True, "max_instances": 4},
        timezone="UTC",
    )
    tasks: set[asyncio.Task[None]] = set()

    def listener(evt: JobExecutionEvent) -> None:
        if evt.code == EVENT_JOB_MISSED:
            task = asyncio.get_running_loop().create_task(
                on_missed(evt.job_id, evt.scheduled_run_time)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif evt.code == EVENT_JOB_ERROR:
            log.error("job.failed", job=evt.job_id, error=repr(evt.exception))

    scheduler.add_listener(listener, EVENT_JOB_MISSED | EVENT_JOB_ERROR)
    return scheduler


def remove_quietly(scheduler: AsyncIOScheduler, job_id: str) -> None:
    with contextlib.suppress(JobLookupError):
        scheduler.remove_job(job_id)
