"""The calendar links' use cases (admin API): link, list, show, unlink.

A link is stored with its password encrypted (``shared.secretbox``); a push link gets the
owner's current sessions queued at once. Linking also asks the sync to try the calendar
right away (``on_created``), so GET tells within seconds whether URL and credentials work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.booking import db
from services.booking.calendar.caldav import ics_fetch_url
from services.booking.calendar.context import (
    ICS,
    LOCATION,
    PULL,
    PUSH,
    THERAPIST,
    SyncContext,
    link_status,
)
from services.booking.calendar.push import mark_for_push, pending, sessions_of, window_at
from services.booking.schemas import CalendarLinkIn
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.ids import new_id
from shared.outbound import OutboundRefused
from shared.pagination import PageRequest, keyset

log = structlog.get_logger(__name__)


class DuplicateLink(Conflict):
    """The same owner already has a link in that direction to that URL (409)."""


@dataclass(frozen=True)
class LinkView:
    """A link as the API shows it: its row, how healthy it is, how much is left to do."""

    link: db.CalendarLink
    status: str
    pending_pushes: int | None
    busy_spans: int | None


def link_key(view: LinkView) -> tuple[datetime, str]:
    """The sort key of the list of links."""
    return (view.link.created_at, view.link.id)


def check_link(data: CalendarLinkIn) -> None:
    """The combinations a link cannot have."""
    if data.direction == PULL and data.owner_type != THERAPIST:
        raise InvalidRequest(
            "owner_type", "pull links are for therapists (their own calendar blocks their time)"
        )
    if data.kind == ICS and data.direction != PULL:
        raise InvalidRequest("kind", "an ICS URL can only be read (direction pull)")
    if data.password is not None and data.username is None:
        raise InvalidRequest("username", "a password needs a username")


class CalendarLinks:
    """The use cases; ``on_created(link_id, direction)`` runs after a link is stored."""

    def __init__(
        self, ctx: SyncContext, *, on_created: Callable[[str, str], None] | None = None
    ) -> None:
        self.ctx = ctx
        self._on_created = on_created

    async def create_link(self, data: CalendarLinkIn) -> LinkView:
        """Store a link; a push link gets the owner's current sessions queued at once."""
        check_link(data)
        ctx = self.ctx
        try:
            await ctx.timings.outbound.acheck(ics_fetch_url(data.url))
        except OutboundRefused as exc:
            raise InvalidRequest("url", str(exc)) from exc
        encrypted = ctx.box.encrypt(data.password) if data.password is not None else None
        now = ctx.clock()
        try:
            async with ctx.uow.write() as session:
                timezone = data.timezone or await _owner_zone(session, data)
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
                    id=new_id(),
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
                    for row in await sessions_of(session, link, window_at(now)):
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
        if self._on_created is not None:
            self._on_created(link.id, link.direction)
        return await self.get_link(link.id)

    async def list_links(self, page: PageRequest) -> list[LinkView]:
        """One page by ``(created_at, id)``, plus one link past it (see shared.pagination)."""
        async with self.ctx.uow.read() as session:
            order = (db.CalendarLink.created_at, db.CalendarLink.id)
            query = keyset(select(db.CalendarLink), page, order, (datetime, str))
            links = (await session.scalars(query)).all()
            return await self._views(session, links)

    async def get_link(self, link_id: str) -> LinkView:
        async with self.ctx.uow.read() as session:
            link = await session.get(db.CalendarLink, link_id)
            if link is None:
                raise NotFound("calendar link", link_id)
            return (await self._views(session, [link]))[0]

    async def delete_link(self, link_id: str) -> None:
        """Forget a link, its pending pushes and its busy spans. Events already written
        stay in that calendar: it is not ours any more."""
        async with self.ctx.uow.write() as session:
            link = await session.get(db.CalendarLink, link_id)
            if link is None:
                raise NotFound("calendar link", link_id)
            await session.execute(delete(db.CalendarPush).where(db.CalendarPush.link_id == link_id))
            await session.execute(delete(db.ExternalBusy).where(db.ExternalBusy.link_id == link_id))
            await session.delete(link)
        self.ctx.forget(link_id)
        log.info("calendar_link.deleted", link_id=link_id)

    async def _views(
        self, session: AsyncSession, links: Sequence[db.CalendarLink]
    ) -> list[LinkView]:
        ids = [link.id for link in links]
        pushes: dict[str, int] = {}
        busy: dict[str, int] = {}
        if ids:
            pushes = {
                link_id: count
                for link_id, count in await session.execute(
                    select(db.CalendarPush.link_id, func.count())
                    .where(db.CalendarPush.link_id.in_(ids), pending())
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
        threshold = self.ctx.timings.failure_threshold
        return [
            LinkView(
                link,
                link_status(link, threshold),
                pushes.get(link.id, 0) if link.direction == PUSH else None,
                busy.get(link.id, 0) if link.direction == PULL else None,
            )
            for link in links
        ]


async def _owner_zone(session: AsyncSession, data: CalendarLinkIn) -> str:
    """The owner must exist; its zone places all-day events of a pulled calendar."""
    if data.owner_type == LOCATION:
        location = await session.get(db.Location, data.owner_id)
        if location is None:
            raise InvalidRequest("owner_id", f"location {data.owner_id} does not exist")
        return location.timezone
    therapist = await session.get(db.Therapist, data.owner_id)
    if therapist is None:
        raise InvalidRequest("owner_id", f"therapist {data.owner_id} does not exist")
    zones = await session.scalars(
        select(db.Location.timezone)
        .join(db.WorkingHours, db.WorkingHours.location_id == db.Location.id)
        .where(db.WorkingHours.therapist_id == data.owner_id)
        .order_by(db.Location.name)
        .limit(1)
    )
    return zones.first() or "UTC"
