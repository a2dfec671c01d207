"""The inbox: the event ids each consumer has applied, so a redelivery changes nothing."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Column, MetaData, String, Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import UtcDateTime
from shared.timeutil import utcnow

_metadata = MetaData()

inbox = Table(
    "inbox",
    _metadata,
    Column("consumer", String(100), primary_key=True),
    Column("event_id", String(64), primary_key=True),
    Column("applied_at", UtcDateTime(), nullable=False),
)


def add_inbox_table(metadata: MetaData) -> Table:
    """Copy the inbox table into a service's metadata (each service has its own database)."""
    return inbox.to_metadata(metadata)


async def claim(session: AsyncSession, consumer: str, event_id: str) -> bool:
    """Record that ``consumer`` applies ``event_id`` now; ``False`` if it already did.

    Runs in the handler's transaction: if the handler fails, the claim rolls back with it.
    """
    return event_id in await claim_many(session, consumer, [event_id])


async def claim_many(session: AsyncSession, consumer: str, event_ids: Sequence[str]) -> set[str]:
    """Record that ``consumer`` applies ``event_ids`` now; returns those it had not applied.

    Two statements for a whole batch (one read, one multi-row insert) instead of two per
    event: a fetched batch is claimed in the transaction that applies it. An id given
    twice is claimed once."""
    ids = list(dict.fromkeys(event_ids))
    if not ids:
        return set()
    seen = set(
        await session.scalars(
            select(inbox.c.event_id).where(inbox.c.consumer == consumer, inbox.c.event_id.in_(ids))
        )
    )
    fresh = [i for i in ids if i not in seen]
    if fresh:
        now = utcnow()
        await session.execute(
            insert(inbox), [{"consumer": consumer, "event_id": i, "applied_at": now} for i in fresh]
        )
    return set(fresh)
