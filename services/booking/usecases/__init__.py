"""Booking's use cases, one module per actor; each use case is one transaction of the
unit of work that changes state and queues its events in the outbox.

- ``setup``: an admin sets up the clinic (locations, rooms, treatments, therapists, time
  off, feed tokens);
- ``clients``: the front desk keeps client records;
- ``sessions``: booking, rescheduling and every status change of a session;
- ``replies``: what the reminders service tells us (a client confirmed, a phone opted out);
- ``keys``: an admin issues API keys.

Reads that change nothing live in ``services.booking.queries``; the calendar links'
use cases in ``services.booking.calendar.links``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from shared.errors import NotFound
from shared.uow import UnitOfWork

#: The ``source`` of every event booking publishes.
SOURCE = "booking"

RowT = TypeVar("RowT")


@dataclass(frozen=True)
class Booking:
    """What every use case and query needs: the unit of work and the clinic's defaults."""

    uow: UnitOfWork
    #: Phones typed without a country code are read in this region.
    default_phone_region: str = "US"

    def clock(self) -> datetime:
        return self.uow.clock()


async def get_or_404(session: AsyncSession, model: type[RowT], ident: str, kind: str) -> RowT:
    """The row ``ident`` of ``model``, or :class:`NotFound` naming ``kind``."""
    row = await session.get(model, ident)
    if row is None:
        raise NotFound(kind, ident)
    return row
