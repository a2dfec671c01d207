"""Pull: busy time read from therapists' own calendars (CalDAV or an ICS URL).

What a pull link's calendar says is kept as ``external_busy`` spans, which block
availability like time off. A calendar that cannot be read keeps the spans read before:
a calendar that is down does not free the therapist's time.
"""

from __future__ import annotations

from datetime import timedelta

import structlog
from sqlalchemy import delete

from services.booking import db, domain
from services.booking.calendar import ical
from services.booking.calendar.caldav import CalendarUnavailable, fetch_ics
from services.booking.calendar.context import ICS, PULL, SyncContext
from shared.secretbox import SecretUnavailable
from shared.timeutil import zone

log = structlog.get_logger(__name__)


class Puller:
    """Reads pull links: all of them (the periodic job) or one (a link just created)."""

    def __init__(self, ctx: SyncContext) -> None:
        self.ctx = ctx

    async def pull_all(self) -> None:
        """The periodic job: read every pull link, a few at a time."""
        await self.ctx.each_link(PULL, self.pull_link, "calendar_pull.link_failed")

    async def pull_link(self, link_id: str) -> int | None:
        """Replace the busy spans of one pull link with what its calendar says now.

        Returns how many spans it holds, or ``None`` when it could not be read (the spans
        read before stay).
        """
        ctx = self.ctx
        token = await ctx.claim(link_id)
        if token is None:
            return None
        try:
            async with ctx.uow.read() as session:
                link = await session.get(db.CalendarLink, link_id)
            if link is None or link.direction != PULL:
                return None
            now = ctx.clock()
            window = domain.Interval(
                now - timedelta(days=1), now + timedelta(days=ctx.timings.pull_horizon_days)
            )
            try:
                texts = await self._read_calendar(link, window)
                spans, cut = await ctx.blocking(
                    ical.capped_busy_spans, texts, window, zone(link.timezone)
                )
            except (CalendarUnavailable, SecretUnavailable, ValueError) as exc:
                await self._record(link_id, None, str(exc))
                return None
            await self._record(
                link_id,
                spans,
                f"busy time cut at {len(spans)} spans: the calendar's recurring events "
                "expand to more; later busy time is not blocked"
                if cut
                else None,
            )
            return len(spans)
        finally:
            await ctx.release(link_id, token)

    async def _read_calendar(self, link: db.CalendarLink, window: domain.Interval) -> list[bytes]:
        ctx = self.ctx
        if link.kind == ICS:
            credentials = ctx.credentials(link)
            return [
                await fetch_ics(
                    link.url, credentials, ctx.timings.http_timeout_seconds, ctx.timings.outbound
                )
            ]
        calendar = ctx.calendar(link)
        resources = await ctx.blocking(calendar.resources, window.start, window.end)
        return [text for _href, text in resources]

    async def _record(
        self, link_id: str, spans: list[ical.BusySpan] | None, error: str | None
    ) -> None:
        ctx = self.ctx
        now = ctx.clock()
        async with ctx.uow.write() as session:
            link = await session.get(db.CalendarLink, link_id)
            if link is None:
                return
            if spans is None:
                ctx.failed(link, error or "unknown error", now)
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
            ctx.succeeded(link, now)
            if error is not None:  # read, but not whole (a capped expansion)
                link.last_error = error
                link.last_error_at = now
                log.warning("calendar_pull.cut", link_id=link_id, spans=len(spans))
