"""Booking's use cases, one module per actor; each use case is one transaction of the
unit of work that changes state and queues its events in the outbox.

- ``setup``: an admin sets up the clinic (locations, rooms, treatments, therapists, time
  off, feed tokens);
- ``clients``: the front desk keeps client records;
- ``sessions``: booking, rescheduling and every status change of a session;
- ``changes``: an admin changes the clinic after set-up (renames, retirements; announced);
- ``schedule``: working hours as versions, time off corrected or withdrawn, closures;
- ``replies``: what the reminders service tells us (a client confirmed, a phone opted out);
- ``keys``: an admin issues API keys.

Reads that change nothing live in ``services.booking.queries``; the calendar links'
use cases in ``services.booking.calendar.links``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from services.booking.setup_cache import SetupCache
from shared.errors import NotFound
from shared.uow import UnitOfWork

#: The ``source`` of every event booking publishes.
SOURCE = "booking"

RowT = TypeVar("RowT")


def no_manage_link(_session_id: str) -> str | None:
    """No client's page: what a context without a link signer gives (and production while
    the documented development key is in force)."""
    return None


@dataclass(frozen=True)
class Booking:
    """What every use case and query needs: the unit of work and the clinic's defaults."""

    uow: UnitOfWork
    #: Phones typed without a country code are read in this region.
    default_phone_region: str = "US"
    #: The signed URL of the client's own page for a session (``manage.links``); every
    #: session event and answer carries it, so it is built where those are built.
    manage_url: Callable[[str], str | None] = no_manage_link
    #: How long a waitlist offer stays open (``WAITLIST_OFFER_SECONDS``).
    offer_ttl: timedelta = timedelta(minutes=15)
    #: The set-up as this process last read it, checked in every transaction that uses it.
    setup: SetupCache = field(default_factory=SetupCache)

    def clock(self) -> datetime:
        return self.uow.clock()


async def get_or_404(session: AsyncSession, model: type[RowT], ident: str, kind: str) -> RowT:
    """The row ``ident`` of ``model``, or :class:`NotFound` naming ``kind``."""
    row = await session.get(model, ident)
    if row is None:
        raise NotFound(kind, ident)
    return row
