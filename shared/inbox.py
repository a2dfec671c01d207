"""The inbox: the event ids each consumer has applied, so a redelivery changes nothing."""

from __future__ import annotations

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
    seen = await session.scalar(
        select(inbox.c.event_id).where(inbox.c.consumer == consumer, inbox.c.event_id == event_id)
    )
    if seen is not None:
        return False
    await session.execute(
        insert(inbox).values(consumer=consumer, event_id=event_id, applied_at=utcnow())
    )
    return True
