"""Reconcile: a push calendar compared with the sessions it should hold, and repaired.

People edit calendars by hand: an event we wrote may be deleted or moved there, and an
event may outlive its session. Reconcile writes again what is missing or changed (by
queueing a forced push) and removes our events the calendar should not hold.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from services.booking import db
from services.booking.calendar import ical
from services.booking.calendar.caldav import CalendarUnavailable
from services.booking.calendar.context import PUSH, SyncContext
from services.booking.calendar.push import mark_for_push, sessions_of, window_at
from shared.secretbox import SecretUnavailable

log = structlog.get_logger(__name__)


class Reconciler:
    """Repairs push calendars: all of them (the periodic job) or one (a link just created)."""

    def __init__(self, ctx: SyncContext, *, wake_pushes: Callable[[], None]) -> None:
        self.ctx = ctx
        #: The push worker skips a leased link; it is told when the lease is let go.
        self._wake_pushes = wake_pushes

    async def reconcile_all(self) -> None:
        """The periodic job: compare every push calendar with the sessions."""
        await self.ctx.each_link(PUSH, self.reconcile_link, "calendar_reconcile.link_failed")

    async def reconcile_link(self, link_id: str) -> ical.Repairs | None:
        """Repair one push calendar: write again what is missing or was changed there,
        remove our events it should not hold. ``None`` when busy or unreachable.

        The calendar is read before the sessions, under the link's lease (no push runs
        meanwhile): an event it holds was written for a session already committed, so a
        session booked during the read is never mistaken for a stale one.
        """
        ctx = self.ctx
        token = await ctx.claim(link_id)
        if token is None:
            return None
        try:
            async with ctx.uow.read() as session:
                link = await session.get(db.CalendarLink, link_id)
            if link is None or link.direction != PUSH:
                return None
            window = window_at(ctx.clock())
            try:
                calendar = ctx.calendar(link)
                resources = await ctx.blocking(calendar.resources, window.start, window.end)
            except (CalendarUnavailable, SecretUnavailable) as exc:
                await self._record(link_id, None, {}, str(exc))
                return None
            found = [
                f for f in ical.our_events(resources) if window.start <= f.state.start < window.end
            ]
            async with ctx.uow.read() as session:
                expected_rows = await sessions_of(session, link, window)
            expected = {row.id: ical.expected_state(row) for row in expected_rows}
            versions = {row.id: row.version for row in expected_rows}
            repairs = ical.plan_repairs(expected, found)
            error = None
            for stale in repairs.remove:
                try:
                    await ctx.blocking(calendar.delete, stale.href)
                except CalendarUnavailable as exc:
                    error = str(exc)
                    break
            await self._record(link_id, repairs, versions, error)
            if repairs.rewrite or repairs.remove:
                log.info(
                    "calendar_reconcile.repaired",
                    link_id=link_id,
                    rewrite=len(repairs.rewrite),
                    removed=len(repairs.remove),
                )
            return repairs
        finally:
            await ctx.release(link_id, token)
            self._wake_pushes()

    async def _record(
        self,
        link_id: str,
        repairs: ical.Repairs | None,
        versions: dict[str, int],
        error: str | None,
    ) -> None:
        ctx = self.ctx
        now = ctx.clock()
        async with ctx.uow.write() as session:
            link = await session.get(db.CalendarLink, link_id)
            if link is None:
                return
            if repairs is not None:
                for session_id in repairs.rewrite:
                    await mark_for_push(
                        session, link_id, session_id, versions[session_id], now, force=True
                    )
            if error is not None:
                ctx.failed(link, error, now)
            elif repairs is not None:
                ctx.succeeded(link, now)
