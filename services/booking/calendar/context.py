"""What every calendar job shares: the unit of work, the secret box, the timings, a thread
pool for the blocking CalDAV client, the per-link lease and the link's health bookkeeping.

Push, pull and reconcile each take one :class:`SyncContext`; none of them owns another.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog
from sqlalchemy import or_, select, update

from services.booking import db
from services.booking.calendar.caldav import CalDavCalendar, Credentials, describe
from services.booking.settings import BookingSettings
from shared.outbound import OutboundPolicy
from shared.secretbox import SecretBox
from shared.uow import UnitOfWork

log = structlog.get_logger(__name__)

T = TypeVar("T")

PUSH, PULL = "push", "pull"
CALDAV, ICS = "caldav", "ics"
THERAPIST, LOCATION = "therapist", "location"


@dataclass(frozen=True)
class SyncTimings:
    """The knobs of the sync, from the settings (tests make them short)."""

    push_poll_seconds: float = 5.0
    push_concurrency: int = 8
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 300.0
    failure_threshold: int = 5
    pull_interval_seconds: float = 300.0
    reconcile_interval_seconds: float = 900.0
    pull_horizon_days: int = 120
    http_timeout_seconds: float = 15.0
    #: Which calendar URLs may be called (OUTBOUND_ALLOWED_HOSTS); checked at every request.
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)

    @classmethod
    def from_settings(cls, settings: BookingSettings) -> SyncTimings:
        return cls(
            push_poll_seconds=settings.calendar_push_poll_seconds,
            push_concurrency=settings.calendar_push_concurrency,
            retry_base_seconds=settings.calendar_retry_base_seconds,
            retry_max_seconds=settings.calendar_retry_max_seconds,
            failure_threshold=settings.calendar_failure_threshold,
            pull_interval_seconds=settings.calendar_pull_interval_seconds,
            reconcile_interval_seconds=settings.calendar_reconcile_interval_seconds,
            pull_horizon_days=settings.calendar_pull_horizon_days,
            http_timeout_seconds=settings.calendar_http_timeout_seconds,
            outbound=OutboundPolicy.from_settings(settings),
        )

    def backoff(self, failures: int) -> timedelta:
        """Delay before the next try after ``failures`` failures in a row: doubling, capped."""
        seconds = self.retry_base_seconds * 2 ** max(failures - 1, 0)
        return timedelta(seconds=min(seconds, self.retry_max_seconds))

    @property
    def lease(self) -> timedelta:
        """Long enough for a batch of slow requests; a crashed holder frees it after this."""
        return timedelta(seconds=max(60.0, 4 * self.http_timeout_seconds))


def link_status(link: db.CalendarLink, threshold: int) -> str:
    """``failing`` after ``threshold`` failures in a row, ``retrying`` before that,
    ``ok`` once synced, ``pending`` until the first sync."""
    if link.consecutive_failures >= threshold:
        return "failing"
    if link.consecutive_failures > 0:
        return "retrying"
    return "ok" if link.last_synced_at is not None else "pending"


@dataclass
class SyncStats:
    """Counters for tests, the bench and curious operators."""

    pushed: int = 0
    removed: int = 0
    failures: int = 0


class SyncContext:
    """The shared state of one process's calendar jobs."""

    def __init__(
        self,
        uow: UnitOfWork,
        box: SecretBox,
        timings: SyncTimings,
        *,
        instance: str | None = None,
    ) -> None:
        self.uow = uow
        self.box = box
        self.timings = timings
        self.instance = instance or uuid.uuid4().hex[:12]
        self.stats = SyncStats()
        #: Calendars worked on at the same time (push, pull and reconcile alike).
        self.limit = asyncio.Semaphore(max(1, timings.push_concurrency))
        # Threads start on first use; the pool is the sync's own, so slow calendars never
        # hold up the default executor.
        self._executor = ThreadPoolExecutor(
            max_workers=timings.push_concurrency + 2, thread_name_prefix="calendar"
        )
        self._calendars: dict[str, tuple[tuple[str, str | None, str | None], CalDavCalendar]] = {}
        self._background: set[asyncio.Task[Any]] = set()

    def clock(self) -> datetime:
        return self.uow.clock()

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking calendar call in the sync's own threads, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def each_link(
        self, direction: str, work: Callable[[str], Coroutine[Any, Any, Any]], failed: str
    ) -> None:
        """The periodic jobs: run ``work`` for every link of ``direction``, a few at a time;
        one link failing is logged as ``failed`` and the others go on."""
        async with self.uow.read() as session:
            link_ids = list(
                await session.scalars(
                    select(db.CalendarLink.id).where(db.CalendarLink.direction == direction)
                )
            )

        async def one(link_id: str) -> None:
            async with self.limit:
                try:
                    await work(link_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning(failed, link_id=link_id, error=describe(exc))

        await asyncio.gather(*(one(link_id) for link_id in link_ids))

    def in_background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` without waiting for it; :meth:`close` cancels what is left."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the link's lease --------------------------------------------------------------

    async def claim(self, link_id: str) -> str | None:
        """Take the link for a while; ``None`` if another worker holds it."""
        token = f"{self.instance}:{uuid.uuid4().hex[:12]}"
        now = self.clock()
        async with self.uow.write() as session:
            result = await session.execute(
                update(db.CalendarLink)
                .where(
                    db.CalendarLink.id == link_id,
                    or_(db.CalendarLink.lease_until.is_(None), db.CalendarLink.lease_until < now),
                )
                .values(lease_owner=token, lease_until=now + self.timings.lease)
            )
        return token if getattr(result, "rowcount", 0) == 1 else None

    async def release(self, link_id: str, token: str) -> None:
        with contextlib.suppress(Exception):
            async with self.uow.write() as session:
                await session.execute(
                    update(db.CalendarLink)
                    .where(db.CalendarLink.id == link_id, db.CalendarLink.lease_owner == token)
                    .values(lease_owner=None, lease_until=None)
                )

    # -- the link's health -------------------------------------------------------------

    def succeeded(self, link: db.CalendarLink, now: datetime) -> None:
        if link.consecutive_failures >= self.timings.failure_threshold:
            log.info("calendar_link.recovered", link_id=link.id, owner_type=link.owner_type)
        link.consecutive_failures = 0
        link.retry_at = None
        link.last_synced_at = now

    def failed(self, link: db.CalendarLink, error: str, now: datetime) -> None:
        self.stats.failures += 1
        link.consecutive_failures += 1
        link.last_error = error
        link.last_error_at = now
        link.retry_at = now + self.timings.backoff(link.consecutive_failures)
        fields = {
            "link_id": link.id,
            "owner_type": link.owner_type,
            "owner_id": link.owner_id,
            "direction": link.direction,
            "failures": link.consecutive_failures,
            "error": error,
        }
        if link.consecutive_failures == self.timings.failure_threshold:
            log.warning("calendar_link.failing", **fields)
        else:
            log.info("calendar_link.error", **fields)

    # -- the calendar itself -----------------------------------------------------------

    def credentials(self, link: db.CalendarLink) -> Credentials:
        password = self.box.decrypt(link.password_encrypted) if link.password_encrypted else None
        return Credentials(link.username, password)

    def calendar(self, link: db.CalendarLink) -> CalDavCalendar:
        """The CalDAV client of ``link``, kept between batches (keep-alive connections)."""
        key = (link.url, link.username, link.password_encrypted)
        cached = self._calendars.get(link.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        calendar = CalDavCalendar(
            link.url,
            self.credentials(link),
            self.timings.http_timeout_seconds,
            self.timings.outbound,
        )
        self._calendars[link.id] = (key, calendar)
        return calendar

    def forget(self, link_id: str) -> None:
        """Drop the client of a deleted link."""
        self._calendars.pop(link_id, None)
