"""Push: sessions written into linked CalDAV calendars.

Two halves that meet in the ``calendar_pushes`` table: :func:`mark_session` (the
``booking-caldav`` consumer, database only) says which calendar should hold which session
at which version, and :class:`PushWorker` writes them there, one task per calendar.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.booking import db, domain, queries
from services.booking.calendar import ical
from services.booking.calendar.caldav import CalendarUnavailable, describe
from services.booking.calendar.context import LOCATION, PUSH, THERAPIST, SyncContext
from shared import events
from shared.db import upsert_insert
from shared.secretbox import SecretUnavailable
from shared.uow import UnitOfWork, after_commit
from shared.worker import IDLE_POLL_SECONDS, Worker

log = structlog.get_logger(__name__)

#: The waker a transaction that queued pushes asks for (``UnitOfWork.on_commit``).
PUSH_WAKER = "calendar-push"
#: Rows one calendar task takes at a time; the outcome of a batch is one transaction.
BATCH_SIZE = 50
#: Sessions a push calendar holds (and reconcile compares): the ICS feed's window.
WINDOW_PAST, WINDOW_FUTURE = queries.FEED_PAST, queries.FEED_FUTURE


def belongs(link: db.CalendarLink, row: db.Session) -> bool:
    """Whether ``row`` is a session the push calendar ``link`` should hold."""
    if link.owner_type == THERAPIST:
        return row.therapist_id == link.owner_id
    return row.location_id == link.owner_id


def pending() -> Any:
    """The pushes still to do: never written, or written at an older version."""
    return or_(
        db.CalendarPush.pushed_version.is_(None),
        db.CalendarPush.pushed_version < db.CalendarPush.wanted_version,
    )


def window_at(now: datetime) -> domain.Interval:
    """The sessions a push calendar holds, seen at ``now``."""
    return domain.Interval(now - WINDOW_PAST, now + WINDOW_FUTURE)


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
    The push worker is woken once the transaction commits.
    """
    dialect = session.get_bind().dialect.name
    insert_ = upsert_insert(dialect)
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
    after_commit(session, PUSH_WAKER)


async def sessions_of(
    session: AsyncSession, link: db.CalendarLink, window: domain.Interval
) -> Sequence[db.Session]:
    """The sessions of the link's owner that start inside ``window``."""
    column = db.Session.therapist_id if link.owner_type == THERAPIST else db.Session.location_id
    query = select(db.Session).where(
        column == link.owner_id,
        db.Session.start_at >= window.start,
        db.Session.start_at < window.end,
    )
    return (await session.scalars(query)).unique().all()


#: Whether any push calendar is linked at all (the ``booking-caldav`` consumer's first look).
ANY_PUSH_LINK = select(db.CalendarLink.id).where(db.CalendarLink.direction == PUSH).limit(1)


async def has_push_links(session: AsyncSession) -> bool:
    """Whether :func:`mark_session` could have anything to do: with no push link there is
    no calendar to write to and no ``calendar_pushes`` row (they belong to a link)."""
    connection = await session.connection()  # Core: no ORM work for one id
    return (await connection.scalar(ANY_PUSH_LINK)) is not None


class PushLinkProbe:
    """Whether any push link exists, asked by every ``booking.session.*`` event and read
    once for all the events that asked together (a fetched batch is worked on at once).

    One read answers the events that asked before it began; an event asking while a read
    runs waits for the next one. So each answer was read after its event arrived, hence
    after its session committed: a link created later is reconciled whole when created,
    which writes that session too. Nothing is cached beyond the read.
    """

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
        self._next: asyncio.Task[bool] | None = None
        self._reads: set[asyncio.Task[bool]] = set()

    async def any(self) -> bool:
        if self._next is None:
            self._next = asyncio.ensure_future(self._read())
            self._reads.add(self._next)
            self._next.add_done_callback(self._reads.discard)
        return await asyncio.shield(self._next)

    async def _read(self) -> bool:
        await asyncio.sleep(0)  # the other events of the same batch ask meanwhile
        self._next = None  # who asks from here on gets the next read
        async with self._uow.read() as session:
            return await has_push_links(session)


async def mark_session(session: AsyncSession, data: events.SessionEvent, now: datetime) -> None:
    """``booking.session.*``: the session goes to every push calendar of its therapist
    and its location, and to every calendar that holds it already (so a session moved
    to another therapist leaves the old one's calendar)."""
    owners = or_(
        and_(
            db.CalendarLink.owner_type == THERAPIST,
            db.CalendarLink.owner_id == data.therapist.id,
        ),
        and_(db.CalendarLink.owner_type == LOCATION, db.CalendarLink.owner_id == data.location.id),
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
    for link_id in sorted(link_ids):
        await mark_for_push(session, link_id, data.session_id, data.version, now)


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


class PushWorker:
    """Finds calendars with due pushes and drains each in a task of its own."""

    def __init__(self, ctx: SyncContext) -> None:
        self.ctx = ctx
        self.worker = Worker(
            "calendar-push",
            self._round,
            poll_seconds=ctx.timings.push_poll_seconds,
            idle_poll_seconds=max(ctx.timings.push_poll_seconds, IDLE_POLL_SECONDS),
        )
        self._link_tasks: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        self.worker.start()

    async def stop(self) -> None:
        await self.worker.stop()
        tasks = list(self._link_tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self) -> None:
        """New rows are due (or a calendar's lease was let go)."""
        self.worker.wake()

    async def _round(self) -> None:
        for link_id in await self._due_links():
            if link_id not in self._link_tasks:
                task = asyncio.create_task(self._push_link_guarded(link_id))
                self._link_tasks[link_id] = task
                task.add_done_callback(functools.partial(self._link_task_done, link_id))

    def _link_task_done(self, link_id: str, _task: asyncio.Task[None]) -> None:
        self._link_tasks.pop(link_id, None)
        self.wake()  # rows may have arrived for it while it was finishing

    async def _due_links(self) -> list[str]:
        now = self.ctx.clock()
        async with self.ctx.uow.read() as session:
            rows = await session.scalars(
                select(db.CalendarPush.link_id)
                .join(db.CalendarLink, db.CalendarLink.id == db.CalendarPush.link_id)
                .where(
                    db.CalendarPush.next_attempt_at <= now,
                    pending(),
                    or_(db.CalendarLink.retry_at.is_(None), db.CalendarLink.retry_at <= now),
                    or_(db.CalendarLink.lease_until.is_(None), db.CalendarLink.lease_until < now),
                )
                .distinct()
            )
            return list(rows)

    async def _push_link_guarded(self, link_id: str) -> None:
        try:
            async with self.ctx.limit:
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
        ctx = self.ctx
        token = await ctx.claim(link_id)
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
                    calendar = ctx.calendar(link)
                except SecretUnavailable as exc:
                    released = await self._record(link_id, token, [], error=str(exc), release=True)
                    return done
                for item in items:
                    try:
                        if item.resource is not None:
                            item.stored_href = await ctx.blocking(calendar.put, item.resource)
                        else:
                            await ctx.blocking(
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
                await ctx.release(link_id, token)

    async def _load_due(self, link_id: str) -> tuple[db.CalendarLink | None, list[_PushItem]]:
        now = self.ctx.clock()
        async with self.ctx.uow.read() as session:
            link = await session.get(db.CalendarLink, link_id)
            if link is None:
                return None, []
            rows = (
                await session.scalars(
                    select(db.CalendarPush)
                    .where(
                        db.CalendarPush.link_id == link_id,
                        db.CalendarPush.next_attempt_at <= now,
                        pending(),
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
            rooms = await queries.room_names(session, list(sessions.values()))
            items = []
            for row in rows:
                current = sessions.get(row.session_id)
                uid = ical.session_uid(row.session_id)
                if current is not None and belongs(link, current):
                    resource = ical.session_resource(
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
        ctx = self.ctx
        now = ctx.clock()
        async with ctx.uow.write() as session:
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
                        ctx.stats.pushed += 1
                    else:
                        ctx.stats.removed += 1
                else:
                    row.attempts += 1
                    row.last_error = item.error
                    row.next_attempt_at = now + ctx.timings.backoff(row.attempts)
            failure = error or next((i.error for i in items if i.error), None)
            if failure is not None:
                ctx.failed(link, failure, now)
            elif items:
                ctx.succeeded(link, now)
            if link.lease_owner == token:
                if release:
                    link.lease_owner, link.lease_until = None, None
                else:
                    link.lease_until = now + ctx.timings.lease
        return release
