"""One APScheduler per cluster: the leased scheduler every service uses.

APScheduler 3 (``AsyncIOScheduler``) runs in the one replica that holds a NATS KV lease
(:mod:`shared.lease`); the others wait to take over. A job store is never shared by two
schedulers (PITFALLS), and the lease makes sure of it.

- Job store: the service's database (``SQLAlchemyJobStore`` on one blocking engine set up
  here, WAL and a busy timeout on SQLite) or, for periodic jobs that are rebuilt at every
  take-over, memory.
- Job binding without globals: a stored job names a module-level function
  (``"services.reminders.jobs:send_session_message"``) and carries ids only; the
  :class:`BoundExecutor` runs the handler this process registered for that name, so which
  database and which outbox the job acts on belongs to the process, not to the job.
- SQLite: ``AsyncIOScheduler`` calls its job store synchronously on the event loop. Every
  job store touch happens inside :meth:`shared.gate.Gate.exclusive` (no session of this
  process open), so the store never waits for a lock only the blocked loop could free.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import structlog
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.job import Job
from apscheduler.jobstores.base import BaseJobStore, JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from nats.js.client import JetStreamContext
from sqlalchemy import Engine

from shared.gate import Gate
from shared.jobstore import ChunkedJobStore, job_store_engine
from shared.lease import DEFAULT_BUCKET, Lease

log = structlog.get_logger(__name__)

JobHandler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class JobStoreConfig:
    """Where a scheduler keeps its jobs: a table of the service's database."""

    database_url: str
    table: str = "apscheduler_jobs"
    max_due: int = 200


@dataclass(frozen=True)
class JobSpec:
    """One job to put in the store: ``func`` is a ``"module:function"`` reference."""

    func: str | Callable[..., Any]
    id: str
    trigger: str | BaseTrigger = "date"
    args: Sequence[Any] = ()
    run_date: datetime | None = None
    misfire_grace_time: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


class _BoundJob:
    """A job as the executor sees it, with its function bound to this process's handler."""

    def __init__(self, job: Job, func: JobHandler) -> None:
        self._job = job
        self.func = func

    def __getattr__(self, name: str) -> Any:
        return getattr(self._job, name)

    def __str__(self) -> str:
        return str(self._job)


def _interruptible(job_id: str, func: JobHandler) -> JobHandler:
    """``func`` ending quietly when a scheduler standing down cancels it: the next active
    one repairs what it left, so an interruption is news, not a failure (APScheduler
    would log a traceback per job, hundreds after a lease lost mid-burst)."""

    async def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return await func(*args, **kwargs)
        except asyncio.CancelledError:
            log.info("job.interrupted", job=job_id)
            return None

    return run


class BoundExecutor(AsyncIOExecutor):
    """Runs each job with the handler registered for its function reference; a job whose
    reference has no handler runs its own function (in-memory periodic jobs)."""

    def __init__(self, handlers: Mapping[str, JobHandler]) -> None:
        super().__init__()
        self._handlers = dict(handlers)

    def _do_submit_job(self, job: Job, run_times: Any) -> None:
        handler = self._handlers.get(job.func_ref)
        if handler is None and asyncio.iscoroutinefunction(job.func):
            handler = job.func
        if handler is None:
            super()._do_submit_job(job, run_times)
            return
        super()._do_submit_job(_BoundJob(job, _interruptible(job.id, handler)), run_times)


class GatedScheduler(AsyncIOScheduler):
    """Processes due jobs only inside :meth:`Gate.exclusive`, and coalesces wake-ups (one
    per batch of added jobs instead of one per job)."""

    def __init__(self, gate: Gate, **options: Any) -> None:
        self.gate = gate
        self._processing: asyncio.Task[None] | None = None
        self._again = False
        self._held = threading.local()  # wake-ups held back in this thread, see ``holding``
        super().__init__(**options)

    @contextlib.contextmanager
    def holding_wakeups(self) -> Iterator[None]:
        """Wake-ups asked for in this block wait for its end: jobs added in a transaction
        are only visible once it commits, and a pass run before that (the loop does not
        wait for a job store thread) found no jobs and set no timer: they waited for the
        next add, a whole test's time for a referral's deadlines."""
        self._held.pending = False
        self._held.active = True
        try:
            yield
        finally:
            self._held.active = False
        if self._held.pending:
            self.wakeup()

    def wakeup(self) -> None:
        if getattr(self._held, "active", False):
            self._held.pending = True
            return
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
                wait_seconds = self._process_jobs_in_one_transaction()
                self._start_timer(wait_seconds)
            if not self._again:
                return

    def _process_jobs_in_one_transaction(self) -> float | None:
        """One pass; the jobs it starts leave the store in one transaction, not one each
        (a fifth of a 2,000-text burst's loop time went to those commits). The jobs it
        hands to the executor only start once this returns, so after the commit."""
        store = self._lookup_jobstore("default")
        if not isinstance(store, ChunkedJobStore):
            return cast(float | None, self._process_jobs())
        with store.one_transaction():
            return cast(float | None, self._process_jobs())

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


Hook = Callable[[], Awaitable[None]]


class LeasedScheduler:
    """Waits for the lease named ``key``; while it holds, runs the one scheduler.

    ``on_active`` runs once the scheduler has started (repair, plan what the previous
    holder left); ``on_standby`` once it stopped. ``on_missed`` hears of jobs that ran
    too late to run. ``connected`` is set once NATS is reachable.
    """

    def __init__(
        self,
        *,
        key: str,
        gate: Gate,
        jetstream: Callable[[], JetStreamContext],
        connected: asyncio.Event,
        lease_ttl_seconds: float,
        lease_bucket: str = DEFAULT_BUCKET,
        store: JobStoreConfig | None = None,
        handlers: Mapping[str, JobHandler] | None = None,
        on_active: Hook | None = None,
        on_standby: Hook | None = None,
        on_missed: Callable[[str, datetime], Coroutine[Any, Any, None]] | None = None,
        job_defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.key = key
        self.gate = gate
        self._jetstream = jetstream
        self._connected = connected
        self._ttl = lease_ttl_seconds
        self._bucket = lease_bucket
        self._store = store
        self._handlers = dict(handlers or {})
        self._on_active = on_active
        self._on_standby = on_standby
        self._on_missed = on_missed
        self._job_defaults = dict(job_defaults or {"coalesce": True, "max_instances": 1})
        self.lease: Lease | None = None
        self.scheduler: GatedScheduler | None = None
        self.role = "starting"
        self.became_active = asyncio.Event()
        self._engine: Engine | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._listener_tasks: set[asyncio.Task[None]] = set()
        #: Due jobs run at once, by id (see :meth:`add_jobs`); cancelled on standing down.
        self._running_now: dict[str, asyncio.Task[None]] = {}

    # -- what the service asks ----------------------------------------------------------

    @property
    def active(self) -> bool:
        """This process holds the lease and its scheduler runs."""
        return self.scheduler is not None and self.lease is not None and self.lease.held

    async def add_jobs(self, jobs: Sequence[JobSpec]) -> bool:
        """Put ``jobs`` in the store (replacing same ids); ``False`` when not active.

        A one-shot job already due, whose function has a handler here, runs at once
        instead (a stored copy of it is removed): a confirmation is due the moment it is
        planned, and the store's write, wake-up and delete would only delay it. Should the
        process die before the job has done its work, the next active one repairs it, as
        for a job the store had handed out.
        """
        now = datetime.now(UTC)
        at_once = [job for job in jobs if self._runs_at_once(job, now)]
        later = [job for job in jobs if job not in at_once]

        def write(scheduler: GatedScheduler) -> None:
            if at_once:
                self._remove_stored(scheduler, [job.id for job in at_once])
            for job in later:
                self._add(scheduler, job)

        if not await self._touch_store(write):
            return False
        for job in at_once:
            self._run_now(job, now)
        return True

    def _runs_at_once(self, job: JobSpec, now: datetime) -> bool:
        return (
            job.trigger == "date"
            and job.run_date is not None
            and job.run_date <= now
            and isinstance(job.func, str)
            and job.func in self._handlers
            and job.id not in self._running_now  # one run of a job at a time, as the store
        )

    @staticmethod
    def _remove_stored(scheduler: GatedScheduler, job_ids: Sequence[str]) -> None:
        store = scheduler._lookup_jobstore("default")
        if isinstance(store, ChunkedJobStore):
            store.remove_many(job_ids)
            return
        for job_id in job_ids:
            with contextlib.suppress(JobLookupError):
                scheduler.remove_job(job_id)

    def _run_now(self, job: JobSpec, now: datetime) -> None:
        assert isinstance(job.func, str) and job.run_date is not None
        late = (now - job.run_date).total_seconds()
        if job.misfire_grace_time is not None and late > job.misfire_grace_time:
            if self._on_missed is not None:
                self._track(job.id, self._on_missed(job.id, job.run_date))
            return
        run = _interruptible(job.id, self._handlers[job.func])

        async def run_logged() -> None:
            try:
                await run(*job.args)
            except Exception as exc:
                log.error("job.failed", job=job.id, error=type(exc).__name__)

        self._track(job.id, run_logged())

    def _track(self, job_id: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work, name=f"job-{job_id}")
        self._running_now[job_id] = task
        task.add_done_callback(lambda _: self._running_now.pop(job_id, None))

    async def remove_jobs(self, job_ids: Sequence[str]) -> bool:
        def remove(scheduler: GatedScheduler) -> None:
            for job_id in job_ids:
                with contextlib.suppress(JobLookupError):
                    scheduler.remove_job(job_id)

        return await self._touch_store(remove)

    def running(self, job_id: str) -> bool:
        """Whether a due job :meth:`add_jobs` ran at once is still at work (or about to be)."""
        return job_id in self._running_now

    def job_ids(self) -> list[str]:
        """Ids of the jobs in the store (the active scheduler only; tests and ops look)."""
        return [job.id for job in self.scheduler.get_jobs()] if self.scheduler else []

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"scheduler-{self.key}")

    async def stop(self) -> None:
        """Cancel the loop and wait for it; it also ends at its next look at
        ``_stopping``, should a NATS call lose the cancel (see ``shared.worker``)."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            task.cancel()
            await asyncio.wait({task})

    async def _run(self) -> None:
        await self._connected.wait()
        delay = 0.5
        while not self._stopping:
            self.role = "standby"
            try:
                if self.lease is None:
                    self.lease = Lease(
                        self._jetstream(), key=self.key, ttl_seconds=self._ttl, bucket=self._bucket
                    )
                if not await self.lease.acquire(lambda: self._stopping) or self._stopping:
                    await self.lease.release()
                    return
                await self._lead(self.lease)
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "scheduler.lease_error",
                    key=self.key,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _lead(self, lease: Lease) -> None:
        """Run the scheduler while the lease holds; return when it is lost."""
        keeper = lease.keeper()
        keeper.start()
        try:
            scheduler = self._build()
            async with self.gate.exclusive():
                scheduler.start()
            self.scheduler = scheduler
            if self._on_active is not None:
                await self._on_active()
            self.role = "active"
            self.became_active.set()
            log.info("scheduler.active", key=self.key, holder=lease.holder)
            await lease.lost.wait()
            log.warning("scheduler.standing_down", key=self.key, holder=lease.holder)
        finally:
            self.role = "standby"
            self.became_active.clear()
            await keeper.stop()
            scheduler_, self.scheduler = self.scheduler, None
            if scheduler_ is not None:
                await scheduler_.stop()
            running = list(self._running_now.values())
            for task in running:
                task.cancel()  # as the executor does with the store's running jobs
            if running:  # nothing of this scheduler's may outlive its stop
                await asyncio.gather(*running, return_exceptions=True)
            engine, self._engine = self._engine, None
            if engine is not None:
                engine.dispose()
            if self._on_standby is not None:
                with contextlib.suppress(Exception):
                    await self._on_standby()
            await lease.release()

    def _build(self) -> GatedScheduler:
        store: BaseJobStore
        if self._store is None:
            store = MemoryJobStore()
        else:
            self._engine = job_store_engine(self._store.database_url)
            store = ChunkedJobStore(
                engine=self._engine, tablename=self._store.table, max_due=self._store.max_due
            )
        scheduler = GatedScheduler(
            self.gate,
            jobstores={"default": store},
            executors={"default": BoundExecutor(self._handlers)},
            job_defaults=self._job_defaults,
            timezone="UTC",
        )
        scheduler.add_listener(self._on_event, EVENT_JOB_MISSED | EVENT_JOB_ERROR)
        return scheduler

    def _on_event(self, evt: JobExecutionEvent) -> None:
        if evt.code == EVENT_JOB_ERROR:
            log.error("job.failed", job=evt.job_id, error=type(evt.exception).__name__)
        elif evt.code == EVENT_JOB_MISSED and self._on_missed is not None:
            task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
                self._on_missed(evt.job_id, evt.scheduled_run_time)
            )
            self._listener_tasks.add(task)
            task.add_done_callback(self._listener_tasks.discard)

    # -- job store access ------------------------------------------------------------------

    @staticmethod
    def _add(scheduler: GatedScheduler, job: JobSpec) -> None:
        options: dict[str, Any] = {"replace_existing": True, **job.options}
        if job.run_date is not None:
            options["run_date"] = job.run_date
        scheduler.add_job(
            job.func,
            trigger=job.trigger,
            args=list(job.args),
            id=job.id,
            misfire_grace_time=job.misfire_grace_time,
            **options,
        )

    async def _touch_store(self, work: Callable[[GatedScheduler], Any]) -> bool:
        """Run blocking job store work: on SQLite inside the gate (on the loop, no session
        open), elsewhere on a thread so the loop keeps serving."""
        scheduler = self.scheduler
        if scheduler is None:
            return False

        def in_one_transaction(scheduler: GatedScheduler) -> None:
            store = scheduler._lookup_jobstore("default")
            with scheduler.holding_wakeups():  # woken once committed
                if isinstance(store, ChunkedJobStore):
                    with store.one_transaction():
                        work(scheduler)
                else:
                    work(scheduler)

        if self.gate.enabled:
            async with self.gate.exclusive():
                in_one_transaction(scheduler)
        else:
            await asyncio.to_thread(in_one_transaction, scheduler)
        return True
