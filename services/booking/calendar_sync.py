"""Calendar sync: sessions written into CalDAV calendars, busy time read from therapists' own.

How it fits together, all inside the booking process::

    booking.session.*  --durable consumer booking-caldav (inbox: each event once)-->
        calendar_pushes: one row per (calendar link, session), "write version >= N there".
        Database only: no network call inside the consumer's transaction.
    push worker: one task per calendar drains its due rows. The CalDAV calls run in a
        thread pool of their own, outside any transaction; the outcome is recorded after.
        A failure backs off (per row and per calendar, doubling, capped); a calendar that
        failed CALENDAR_FAILURE_THRESHOLD times in a row is reported ("calendar_link.failing"
        log line, status "failing" in GET /v1/calendar-links) and the others go on. Because
        the rows are in the database, nothing is lost across a restart or an outage.
    APScheduler (AsyncIOScheduler, MemoryJobStore): two interval jobs, rebuilt at every
        start, so there is nothing to persist.
        pull       each pull link (CalDAV or ICS) -> external_busy, which blocks availability
        reconcile  each push calendar against the sessions it should hold: an event deleted
                   or changed by hand is written again, a stale one removed.

A lease on the link row (``lease_owner``/``lease_until``) lets one worker at a time,
across replicas, write to or reconcile one calendar.

What a push writes is the session's current state read from the database when the push
runs, not the event that asked for it: pushes can be retried, reordered or coalesced and
the calendar still ends up with the latest version (UID stable, SEQUENCE = version - 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.booking import calendar_ics, db, domain, ics, usecases
from services.booking.calendar_caldav import (
    CalDavCalendar,
    CalendarUnavailable,
    Credentials,
    describe,
    fetch_ics,
    ics_fetch_url,
)
from services.booking.calendar_secrets import CredentialBox, SecretKeyUnusable
from services.booking.schemas import CalendarLinkIn
from services.booking.settings import BookingSettings
from shared import events
from shared.db import transaction
from shared.outbound import OutboundPolicy, OutboundRefused
from shared.timeutil import zone

log = structlog.get_logger(__name__)

T = TypeVar("T")

PUSH, PULL = "push", "pull"
CALDAV, ICS = "caldav", "ics"
THERAPIST, LOCATION = "therapist", "location"

#: Rows one calendar task takes at a time; the outcome of a batch is one transaction.
BATCH_SIZE = 50
#: Sessions a push calendar holds (and reconcile compares): the ICS feed's window.
WINDOW_PAST, WINDOW_FUTURE = usecases.FEED_PAST, usecases.FEED_FUTURE

PULL_JOB_ID = "calendar-pull"
RECONCILE_JOB_ID = "calendar-reconcile"


class DuplicateLink(Exception):
    """The same owner already has a link in that direction to that URL (409)."""


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


@dataclass(frozen=True)
class LinkView:
    """A link as the API shows it: its row, how healthy it is, how much is left to do."""

    link: db.CalendarLink
    status: str
    pending_pushes: int | None
    busy_spans: int | None


def link_status(link: db.CalendarLink, threshold: int) -> str:
    """``failing`` after ``threshold`` failures in a row, ``retrying`` before that,
    ``ok`` once synced, ``pending`` until the first sync."""
    if link.consecutive_failures >= threshold:
        return "failing"
    if link.consecutive_failures > 0:
        return "retrying"
    return "ok" if link.last_synced_at is not None else "pending"


def belongs(link: db.CalendarLink, row: db.Session) -> bool:
    """Whether ``row`` is a session the push calendar ``link`` should hold."""
    if link.owner_type == THERAPIST:
        return row.therapist_id == link.owner_id
    return row.location_id == link.owner_id


def _pending() -> Any:
    return or_(
        db.CalendarPush.pushed_version.is_(None),
        db.CalendarPush.pushed_version < db.CalendarPush.wanted_version,
    )


async def mark_for_push(
    session: AsyncSession,
    link_id: str,
    session_id: str,
    version: int,
    now: datetime,
    *,
    force: bool = False,
) -> None:
    """Ask for ``session_id`` to be written to ``link_id`` at ``version`` or later.

    An upsert, so two events for one session make one row; ``force`` writes again even
    if that version was written (reconcile found the calendar's copy wrong or missing).
    """
    dialect = session.get_bind().dialect.name
    insert_ = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert_(db.CalendarPush).values(
        link_id=link_id,
        session_id=session_id,
        wanted_version=version,
        pushed_version=None,
        in_calendar=False,
        requested_at=now,
        attempts=0,
        next_attempt_at=now,
        updated_at=now,
    )
    table = db.CalendarPush.__table__
    changes: dict[str, Any] = {
        "wanted_version": func.max(table.c.wanted_version, statement.excluded.wanted_version)
        if dialect == "sqlite"
        else func.greatest(table.c.wanted_version, statement.excluded.wanted_version),
        "requested_at": now,
        "next_attempt_at": now,
        "attempts": 0,
        "updated_at": now,
    }
    if force:
        changes["pushed_version"] = None
    await session.execute(
        statement.on_conflict_do_update(index_elements=["link_id", "session_id"], set_=changes)
    )


@dataclass
class _PushItem:
    """One due row, resolved against the session as it is now."""

    session_id: str
    uid: str
    version: int
    resource: bytes | None  # None: remove the event from this calendar
    href: str | None
    ok: bool = False
    stored_href: str | None = None
    error: str | None = None


class CalendarSync:
    """The push worker, the pull and reconcile jobs, and the calendar-link use cases."""

    def __init__(
        self,
        booking: usecases.Booking,
        box: CredentialBox,
        timings: SyncTimings,
        *,
        instance: str | None = None,
    ) -> None:
        self.booking = booking
        self.box = box
        self.timings = timings
        self.instance = instance or uuid.uuid4().hex[:12]
        self._executor: ThreadPoolExecutor | None = None
        self._wakeup = asyncio.Event()
        self._marked = False
        self._loop_task: asyncio.Task[None] | None = None
        self._link_tasks: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._calendars: dict[str, tuple[tuple[str, str | None, str | None], CalDavCalendar]] = {}
        self._limit = asyncio.Semaphore(max(1, timings.push_concurrency))
        self.scheduler: AsyncIOScheduler | None = None
        #: Counters for tests, the bench and curious operators.
        self.pushed = 0
        self.removed = 0
        self.failures = 0

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, *, jobs: bool = True) -> None:
        """Start the push worker and (``jobs``) the pull and reconcile interval jobs."""
        self._executor = ThreadPoolExecutor(
            max_workers=self.timings.push_concurrency + 2, thread_name_prefix="calendar"
        )
        self._loop_task = asyncio.create_task(self._push_loop(), name="calendar-push")
        if not jobs:
            return
        self.scheduler = AsyncIOScheduler(jobstores={"default": MemoryJobStore()}, timezone=UTC)
        now = datetime.now(UTC)
        common: dict[str, Any] = {"coalesce": True, "max_instances": 1, "replace_existing": True}
        # A late run is still worth doing, once (coalesce); one more than an interval late
        # is skipped because the next one is due by then anyway.
        self.scheduler.add_job(
            self.pull_all,
            IntervalTrigger(seconds=self.timings.pull_interval_seconds),
            id=PULL_JOB_ID,
            name="pull busy time from outside calendars",
            misfire_grace_time=max(1, int(self.timings.pull_interval_seconds)),
            next_run_time=now,
            **common,
        )
        self.scheduler.add_job(
            self.reconcile_all,
            IntervalTrigger(seconds=self.timings.reconcile_interval_seconds),
            id=RECONCILE_JOB_ID,
            name="repair drift in push calendars",
            misfire_grace_time=max(1, int(self.timings.reconcile_interval_seconds)),
            **common,
        )
        self.scheduler.start()

    async def stop(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        tasks = [t for t in (self._loop_task, *self._link_tasks.values()) if t is not None]
        tasks.extend(self._background)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        """Tell the push worker new rows are due."""
        self._wakeup.set()

    def wake_if_marked(self) -> None:
        """After the consumer commits: wake the push worker only if the event queued pushes.

        Most clinics link few calendars; waking (and querying) on every session event
        would cost every booking a database round trip for nothing.
        """
        if self._marked:
            self._marked = False
            self._wakeup.set()

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking calendar call in the sync's own threads, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def _in_background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the consumer ------------------------------------------------------------------

    async def on_session_event(self, session: AsyncSession, event: events.CloudEvent[Any]) -> None:
        """``booking.session.*``: the session goes to every push calendar of its therapist
        and its location, and to every calendar that holds it already (so a session moved
        to another therapist leaves the old one's calendar)."""
        data: events.SessionEvent = event.data
        owners = or_(
            and_(
                db.CalendarLink.owner_type == THERAPIST,
                db.CalendarLink.owner_id == data.therapist.id,
            ),
            and_(
                db.CalendarLink.owner_type == LOCATION, db.CalendarLink.owner_id == data.location.id
            ),
        )
        link_ids = set(
            await session.scalars(
                select(db.CalendarLink.id).where(db.CalendarLink.direction == PUSH, owners)
            )
        )
        link_ids.update(
            await session.scalars(
                select(db.CalendarPush.link_id).where(db.CalendarPush.session_id == data.session_id)
            )
        )
        now = self.booking.clock()
        for link_id in sorted(link_ids):
            await mark_for_push(session, link_id, data.session_id, data.version, now)
        self._marked = self._marked or bool(link_ids)

    # -- leases ------------------------------------------------------------------------

    async def _claim(self, link_id: str) -> str | None:
        """Take the link for a while; ``None`` if another worker holds it."""
        token = f"{self.instance}:{uuid.uuid4().hex[:12]}"
        now = self.booking.clock()
        async with transaction(self.booking.sessions, write=True) as session:
            result = await session.execute(
                update(db.CalendarLink)
                .where(
                    db.CalendarLink.id == link_id,
                    or_(db.CalendarLink.lease_until.is_(None), db.CalendarLink.lease_until < now),
                )
                .values(lease_owner=token, lease_until=now + self.timings.lease)
            )
        return token if getattr(result, "rowcount", 0) == 1 else None

    async def _release(self, link_id: str, token: str) -> None:
        with contextlib.suppress(Exception):
            async with transaction(self.booking.sessions, write=True) as session:
                await session.execute(
                    update(db.CalendarLink)
                    .where(db.CalendarLink.id == link_id, db.CalendarLink.lease_owner == token)
                    .values(lease_owner=None, lease_until=None)
                )

    # -- outcome bookkeeping -----------------------------------------------------------

    def _succeeded(self, link: db.CalendarLink, now: datetime) -> None:
        if link.consecutive_failures >= self.timings.failure_threshold:
            log.info("calendar_link.recovered", link_id=link.id, owner_type=link.owner_type)
        link.consecutive_failures = 0
        link.retry_at = None
        link.last_synced_at = now

    def _failed(self, link: db.CalendarLink, error: str, now: datetime) -> None:
        self.failures += 1
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

    async def _credentials(self, link: db.CalendarLink) -> Credentials:
        password = self.box.decrypt(link.password_encrypted) if link.password_encrypted else None
        return Credentials(link.username, password)

    async def _calendar(self, link: db.CalendarLink) -> CalDavCalendar:
        """The CalDAV client of ``link``, kept between batches (keep-alive connections)."""
        key = (link.url, link.username, link.password_encrypted)
        cached = self._calendars.get(link.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        credentials = await self._credentials(link)
        calendar = CalDavCalendar(
            link.url, credentials, self.timings.http_timeout_seconds, self.timings.outbound
        )
        self._calendars[link.id] = (key, calendar)
        return calendar

    # -- push --------------------------------------------------------------------------

    async def _push_loop(self) -> None:
        while True:
            try:
                for link_id in await self._due_links():
                    if link_id not in self._link_tasks:
                        task = asyncio.create_task(self._push_link_guarded(link_id))
                        self._link_tasks[link_id] = task
                        task.add_done_callback(functools.partial(self._link_task_done, link_id))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("calendar_push.round_failed", error=describe(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self.timings.push_poll_seconds)
            self._wakeup.clear()

    def _link_task_done(self, link_id: str, _task: asyncio.Task[None]) -> None:
        self._link_tasks.pop(link_id, None)
        self.wake()  # rows may have arrived for it while it was finishing

    async def _due_links(self) -> list[str]:
        now = self.booking.clock()
        async with transaction(self.booking.sessions) as session:
            rows = await session.scalars(
                select(db.CalendarPush.link_id)
                .join(db.CalendarLink, db.CalendarLink.id == db.CalendarPush.link_id)
                .where(
                    db.CalendarPush.next_attempt_at <= now,
                    _pending(),
                    or_(db.CalendarLink.retry_at.is_(None), db.CalendarLink.retry_at <= now),
                    or_(db.CalendarLink.lease_until.is_(None), db.CalendarLink.lease_until < now),
                )
                .distinct()
            )
            return list(rows)

    async def _push_link_guarded(self, link_id: str) -> None:
        try:
            async with self._limit:
                await self.push_link(link_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("calendar_push.link_failed", link_id=link_id, error=describe(exc))

    async def push_link(self, link_id: str) -> int:
        """Write every due session of one calendar; returns how many were written.

        Stops at the first failure: the calendar is most likely down, and the rest waits
        for its backoff rather than failing one by one.
        """
        token = await self._claim(link_id)
        if token is None:
            return 0
        done = 0
        released = False
        try:
            while True:
                link, items = await self._load_due(link_id)
                if link is None or not items:
                    return done
                try:
                    calendar = await self._calendar(link)
                except SecretKeyUnusable as exc:
                    released = await self._record(link_id, token, [], error=str(exc), release=True)
                    return done
                for item in items:
                    try:
                        if item.resource is not None:
                            item.stored_href = await self._blocking(calendar.put, item.resource)
                        else:
                            await self._blocking(
                                calendar.delete, item.href or calendar.href_for(item.uid)
                            )
                        item.ok = True
                    except CalendarUnavailable as exc:
                        item.error = str(exc)
                        break
                finished = [i for i in items if i.ok or i.error]
                failed = any(i.error for i in finished)
                # A short batch was all there was: let go of the link in the same
                # transaction (rows that arrive meanwhile wake the worker again).
                last = failed or len(items) < BATCH_SIZE
                released = await self._record(link_id, token, finished, release=last)
                done += sum(1 for i in finished if i.ok)
                if last:
                    return done
        finally:
            if not released:
                await self._release(link_id, token)

    async def _load_due(self, link_id: str) -> tuple[db.CalendarLink | None, list[_PushItem]]:
        now = self.booking.clock()
        async with transaction(self.booking.sessions) as session:
            link = await session.get(db.CalendarLink, link_id)
            if link is None:
                return None, []
            rows = (
                await session.scalars(
                    select(db.CalendarPush)
                    .where(
                        db.CalendarPush.link_id == link_id,
                        db.CalendarPush.next_attempt_at <= now,
                        _pending(),
                    )
                    .order_by(db.CalendarPush.next_attempt_at, db.CalendarPush.session_id)
                    .limit(BATCH_SIZE)
                )
            ).all()
            if not rows:
                return link, []
            ids = [r.session_id for r in rows]
            sessions = {
                s.id: s
                for s in (
                    await session.scalars(select(db.Session).where(db.Session.id.in_(ids)))
                ).unique()
            }
            rooms = await usecases._room_names(session, list(sessions.values()))
            items = []
            for row in rows:
                current = sessions.get(row.session_id)
                uid = ics.session_uid(row.session_id)
                if current is not None and belongs(link, current):
                    resource = calendar_ics.session_resource(
                        current, rooms.get(current.room_id, "Room"), now
                    )
                    items.append(
                        _PushItem(row.session_id, uid, current.version, resource, row.href)
                    )
                else:
                    version = current.version if current is not None else row.wanted_version
                    items.append(_PushItem(row.session_id, uid, version, None, row.href))
            return link, items

    async def _record(
        self,
        link_id: str,
        token: str,
        items: Sequence[_PushItem],
        *,
        error: str | None = None,
        release: bool = False,
    ) -> bool:
        """Store what a batch did, and renew (or ``release``) the lease, in one short
        transaction. Returns whether the lease is released."""
        now = self.booking.clock()
        async with transaction(self.booking.sessions, write=True) as session:
            link = await session.get(db.CalendarLink, link_id)
            if link is None:
                return True  # deleted meanwhile: nothing to keep, no lease to let go
            for item in items:
                row = await session.get(db.CalendarPush, (link_id, item.session_id))
                if row is None:
                    continue
                row.updated_at = now
                if item.ok:
                    row.pushed_version = item.version
                    row.in_calendar = item.resource is not None
                    row.href = item.stored_href if item.resource is not None else None
                    row.attempts = 0
                    row.last_error = None
                    if item.resource is not None:
                        self.pushed += 1
                    else:
                        self.removed += 1
                else:
                    row.attempts += 1
                    row.last_error = item.error
                    row.next_attempt_at = now + self.timings.backoff(row.attempts)
            failure = error or next((i.error for i in items if i.error), None)
            if failure is not None:
                self._failed(link, failure, now)
            elif items:
                self._succeeded(link, now)
            if link.lease_owner == token:
                if release:
                    link.lease_owner, link.lease_until = None, None
                else:
                    link.lease_until = now + self.timings.lease
        return release

    # -- pull --------------------------------------------------------------------------

    async def pull_all(self) -> None:
        """The interval job: read every pull link, a few at a time."""
        async with transaction(self.booking.sessions) as session:
            link_ids = list(
                await session.scalars(
                    select(db.CalendarLink.id).where(db.CalendarLink.direction == PULL)
                )
            )

        async def one(link_id: str) -> None:
            async with self._limit:
                try:
                    await self.pull_link(link_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("calendar_pull.link_failed", link_id=link_id, error=describe(exc))

        await asyncio.gather(*(one(link_id) for link_id in link_ids))

    async def pull_link(self, link_id: str) -> int | None:
        """Replace the busy spans of one pull link with what its calendar says now.

        Returns how many spans it holds, or ``None`` when it could not be read (the spans
        read before stay: a calendar that is down does not free the therapist's time).
        """
        token = await self._claim(link_id)
        if token is None:
            return None
        try:
            async with transaction(self.booking.sessions) as session:
                link = await session.get(db.CalendarLink, link_id)
            if link is None or link.direction != PULL:
                return None
            now = self.booking.clock()
            window = domain.Interval(
                now - timedelta(days=1), now + timedelta(days=self.timings.pull_horizon_days)
            )
            try:
                texts = await self._read_calendar(link, window)
                spans, cut = await self._blocking(
                    calendar_ics.capped_busy_spans, texts, window, zone(link.timezone)
                )
            except (CalendarUnavailable, SecretKeyUnusable, ValueError) as exc:
                await self._record_pull(link_id, None, str(exc))
                return None
            await self._record_pull(
                link_id,
                spans,
                f"busy time cut at {len(spans)} spans: the calendar's recurring events "
                "expand to more; later busy time is not blocked"
                if cut
                else None,
            )
            return len(spans)
        finally:
            await self._release(link_id, token)

    async def _read_calendar(self, link: db.CalendarLink, window: domain.Interval) -> list[bytes]:
        if link.kind == ICS:
            credentials = await self._credentials(link)
            return [
                await fetch_ics(
                    link.url, credentials, self.timings.http_timeout_seconds, self.timings.outbound
                )
            ]
        calendar = await self._calendar(link)
        resources = await self._blocking(calendar.resources, window.start, window.end)
        return [text for _href, text in resources]

    async def _record_pull(
        self, link_id: str, spans: list[calendar_ics.BusySpan] | None, error: str | None
    ) -> None:
        now = self.booking.clock()
        async with self.booking.write() as session:
            link = await session.get(db.CalendarLink, link_id)
            if link is None:
                return
            if spans is None:
                self._failed(link, error or "unknown error", now)
                return
            await session.execute(delete(db.ExternalBusy).where(db.ExternalBusy.link_id == link_id))
            session.add_all(
                db.ExternalBusy(
                    link_id=link_id,
                    therapist_id=link.owner_id,
                    start_at=span.start,
                    end_at=span.end,
                    uid=span.uid,
                )
                for span in spans
            )
            self._succeeded(link, now)
            if error is not None:  # read, but not whole (a capped expansion)
                link.last_error = error
                link.last_error_at = now
                log.warning("calendar_pull.cut", link_id=link_id, spans=len(spans))

    # -- reconcile ---------------------------------------------------------------------

    async def reconcile_all(self) -> None:
        """The interval job: compare every push calendar with the sessions."""
        async with transaction(self.booking.sessions) as session:
            link_ids = list(
                await session.scalars(
                    select(db.CalendarLink.id).where(db.CalendarLink.direction == PUSH)
                )
            )

        async def one(link_id: str) -> None:
            async with self._limit:
                try:
                    await self.reconcile_link(link_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning(
                        "calendar_reconcile.link_failed", link_id=link_id, error=describe(exc)
                    )

        await asyncio.gather(*(one(link_id) for link_id in link_ids))

    async def reconcile_link(self, link_id: str) -> calendar_ics.Repairs | None:
        """Repair one push calendar: write again what is missing or was changed there,
        remove our events it should not hold. ``None`` when busy or unreachable.

        The calendar is read before the sessions, under the link's lease (no push runs
        meanwhile): an event it holds was written for a session already committed, so a
        session booked during the read is never mistaken for a stale one.
        """
        token = await self._claim(link_id)
        if token is None:
            return None
        try:
            async with transaction(self.booking.sessions) as session:
                link = await session.get(db.CalendarLink, link_id)
            if link is None or link.direction != PUSH:
                return None
            now = self.booking.clock()
            window = domain.Interval(now - WINDOW_PAST, now + WINDOW_FUTURE)
            try:
                calendar = await self._calendar(link)
                resources = await self._blocking(calendar.resources, window.start, window.end)
            except (CalendarUnavailable, SecretKeyUnusable) as exc:
                await self._record_reconcile(link_id, None, {}, str(exc))
                return None
            found = [
                f
                for f in calendar_ics.our_events(resources)
                if window.start <= f.state.start < window.end
            ]
            async with transaction(self.booking.sessions) as session:
                expected_rows = await self._sessions_of(session, link, window)
            expected = {row.id: calendar_ics.expected_state(row) for row in expected_rows}
            versions = {row.id: row.version for row in expected_rows}
            repairs = calendar_ics.plan_repairs(expected, found)
            error = None
            for stale in repairs.remove:
                try:
                    await self._blocking(calendar.delete, stale.href)
                except CalendarUnavailable as exc:
                    error = str(exc)
                    break
            await self._record_reconcile(link_id, repairs, versions, error)
            if repairs.rewrite or repairs.remove:
                log.info(
                    "calendar_reconcile.repaired",
                    link_id=link_id,
                    rewrite=len(repairs.rewrite),
                    removed=len(repairs.remove),
                )
            self.wake()
            return repairs
        finally:
            await self._release(link_id, token)

    async def _sessions_of(
        self, session: AsyncSession, link: db.CalendarLink, window: domain.Interval
    ) -> Sequence[db.Session]:
        column = db.Session.therapist_id if link.owner_type == THERAPIST else db.Session.location_id
        return (
            (
                await session.scalars(
                    select(db.Session).where(
                        column == link.owner_id,
                        db.Session.start_at >= window.start,
                        db.Session.start_at < window.end,
                    )
                )
            )
            .unique()
            .all()
        )

    async def _record_reconcile(
        self,
        link_id: str,
        repairs: calendar_ics.Repairs | None,
        versions: dict[str, int],
        error: str | None,
    ) -> None:
        now = self.booking.clock()
        async with self.booking.write() as session:
            link = await session.get(db.CalendarLink, link_id)
            if link is None:
                return
            if repairs is not None:
                for session_id in repairs.rewrite:
                    await mark_for_push(
                        session, link_id, session_id, versions[session_id], now, force=True
                    )
            if error is not None:
                self._failed(link, error, now)
            elif repairs is not None:
                self._succeeded(link, now)

    # -- the links themselves (admin API) ----------------------------------------------

    async def create_link(self, data: CalendarLinkIn) -> LinkView:
        """Store a link; a push link gets the owner's current sessions queued at once."""
        if data.direction == PULL and data.owner_type != THERAPIST:
            raise usecases.InvalidRequest(
                "owner_type: pull links are for therapists (their own calendar blocks their time)"
            )
        if data.kind == ICS and data.direction != PULL:
            raise usecases.InvalidRequest("kind: an ICS URL can only be read (direction pull)")
        if data.password is not None and data.username is None:
            raise usecases.InvalidRequest("username: a password needs a username")
        try:
            await self.timings.outbound.acheck(ics_fetch_url(data.url))
        except OutboundRefused as exc:
            raise usecases.InvalidRequest(f"url: {exc}") from exc
        encrypted = self.box.encrypt(data.password) if data.password is not None else None
        now = self.booking.clock()
        try:
            async with self.booking.write() as session:
                timezone = data.timezone or await self._owner_zone(session, data)
                clash = await session.scalar(
                    select(db.CalendarLink.id).where(
                        db.CalendarLink.owner_type == data.owner_type,
                        db.CalendarLink.owner_id == data.owner_id,
                        db.CalendarLink.direction == data.direction,
                        db.CalendarLink.url == data.url,
                    )
                )
                if clash is not None:
                    raise DuplicateLink(
                        f"{data.owner_type} {data.owner_id} already has a {data.direction} "
                        f"link to that URL: {clash}"
                    )
                link = db.CalendarLink(
                    id=usecases.new_id(),
                    owner_type=data.owner_type,
                    owner_id=data.owner_id,
                    direction=data.direction,
                    kind=data.kind,
                    url=data.url,
                    username=data.username,
                    password_encrypted=encrypted,
                    timezone=timezone,
                    created_at=now,
                    consecutive_failures=0,
                )
                session.add(link)
                await session.flush()
                queued = 0
                if data.direction == PUSH:
                    window = domain.Interval(now - WINDOW_PAST, now + WINDOW_FUTURE)
                    for row in await self._sessions_of(session, link, window):
                        await mark_for_push(session, link.id, row.id, row.version, now)
                        queued += 1
        except IntegrityError as exc:
            raise DuplicateLink("that link exists already") from exc
        log.info(
            "calendar_link.created",
            link_id=link.id,
            owner_type=link.owner_type,
            direction=link.direction,
            kind=link.kind,
            queued=queued,
        )
        if self._loop_task is not None:
            # Try the calendar at once, so GET shows within seconds whether URL and
            # credentials work (a push link with no sessions would say nothing otherwise).
            first = self.reconcile_link if data.direction == PUSH else self.pull_link
            self._in_background(first(link.id))
            self.wake()
        return await self.get_link(link.id)

    async def _owner_zone(self, session: AsyncSession, data: CalendarLinkIn) -> str:
        """The owner must exist; its zone places all-day events of a pulled calendar."""
        if data.owner_type == LOCATION:
            location = await session.get(db.Location, data.owner_id)
            if location is None:
                raise usecases.InvalidRequest(f"owner_id: location {data.owner_id} does not exist")
            return location.timezone
        therapist = await session.get(db.Therapist, data.owner_id)
        if therapist is None:
            raise usecases.InvalidRequest(f"owner_id: therapist {data.owner_id} does not exist")
        zones = await session.scalars(
            select(db.Location.timezone)
            .join(db.WorkingHours, db.WorkingHours.location_id == db.Location.id)
            .where(db.WorkingHours.therapist_id == data.owner_id)
            .order_by(db.Location.name)
            .limit(1)
        )
        return zones.first() or "UTC"

    async def _views(
        self, session: AsyncSession, links: Sequence[db.CalendarLink]
    ) -> list[LinkView]:
        ids = [link.id for link in links]
        pending: dict[str, int] = {}
        busy: dict[str, int] = {}
        if ids:
            pending = {
                link_id: count
                for link_id, count in await session.execute(
                    select(db.CalendarPush.link_id, func.count())
                    .where(db.CalendarPush.link_id.in_(ids), _pending())
                    .group_by(db.CalendarPush.link_id)
                )
            }
            busy = {
                link_id: count
                for link_id, count in await session.execute(
                    select(db.ExternalBusy.link_id, func.count())
                    .where(db.ExternalBusy.link_id.in_(ids))
                    .group_by(db.ExternalBusy.link_id)
                )
            }
        return [
            LinkView(
                link,
                link_status(link, self.timings.failure_threshold),
                pending.get(link.id, 0) if link.direction == PUSH else None,
                busy.get(link.id, 0) if link.direction == PULL else None,
            )
            for link in links
        ]

    async def list_links(self) -> list[LinkView]:
        async with self.booking.read() as session:
            links = (
                await session.scalars(
                    select(db.CalendarLink).order_by(db.CalendarLink.created_at, db.CalendarLink.id)
                )
            ).all()
            return await self._views(session, links)

    async def get_link(self, link_id: str) -> LinkView:
        async with self.booking.read() as session:
            link = await session.get(db.CalendarLink, link_id)
            if link is None:
                raise usecases.NotFound("calendar link", link_id)
            return (await self._views(session, [link]))[0]

    async def delete_link(self, link_id: str) -> None:
        """Forget a link, its pending pushes and its busy spans. Events already written
        stay in that calendar: it is not ours any more."""
        async with self.booking.write() as session:
            link = await session.get(db.CalendarLink, link_id)
            if link is None:
                raise usecases.NotFound("calendar link", link_id)
            await session.execute(delete(db.CalendarPush).where(db.CalendarPush.link_id == link_id))
            await session.execute(delete(db.ExternalBusy).where(db.ExternalBusy.link_id == link_id))
            await session.delete(link)
        self._calendars.pop(link_id, None)
        log.info("calendar_link.deleted", link_id=link_id)
