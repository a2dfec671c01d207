"""The transactional outbox: an event is written with the change it announces, then relayed.

``enqueue`` adds the event to the caller's transaction and asks for the relay to be woken
once it commits (``shared.uow.after_commit``). ``OutboxRelay`` publishes committed
rows to JetStream, each with ``Nats-Msg-Id`` = the event id, and marks a row published
only after the PubAck. If NATS is down the rows wait; nothing is lost and nothing leaves
before its transaction commits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import UtcDateTime, batch_writes, one_read, transaction
from shared.events import CloudEvent
from shared.timeutil import utcnow
from shared.uow import after_commit
from shared.worker import IDLE_POLL_SECONDS, Worker

log = structlog.get_logger(__name__)

_metadata = MetaData()

outbox = Table(
    "outbox",
    _metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("subject", String(200), nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("published_at", UtcDateTime(), nullable=True, index=True),
)

#: The waker name a transaction with events asks for (``UnitOfWork.on_commit``).
OUTBOX = "outbox"

Publish = Callable[[str, bytes, str], Awaitable[Any]]


def add_outbox_table(metadata: MetaData) -> Table:
    """Copy the outbox table into a service's metadata."""
    return outbox.to_metadata(metadata)


async def enqueue(session: AsyncSession, event: CloudEvent[Any]) -> None:
    """Add ``event`` to the current transaction; it leaves only if the transaction commits,
    and the relay is woken then."""
    after_commit(session, OUTBOX)
    await session.execute(
        insert(outbox).values(
            event_id=event.id,
            subject=event.type,
            payload=event.model_dump_json(),
            created_at=utcnow(),
        )
    )


class OutboxRelay:
    """Publishes committed outbox rows in order; woken after each commit, polls otherwise."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        publish: Publish,
        *,
        poll_seconds: float = 1.0,
        batch_size: int = 200,
    ) -> None:
        self._sessions = sessions
        self._publish = publish
        self._batch_size = batch_size
        # Every commit with events wakes the relay; the poll only finds what a crash left.
        self.worker = Worker(
            "outbox-relay",
            self._step,
            poll_seconds=poll_seconds,
            idle_poll_seconds=max(poll_seconds, IDLE_POLL_SECONDS),
        )
        self.published = 0

    def wake(self) -> None:
        """Tell the relay a transaction with events just committed."""
        self.worker.wake()

    def start(self) -> None:
        self.worker.start()

    async def stop(self) -> None:
        await self.worker.stop()

    async def _step(self) -> bool:
        return await self.relay_once() == self._batch_size  # a full batch: more are waiting

    async def relay_once(self) -> int:
        """Publish one batch of pending rows; returns how many were published."""
        async with transaction(self._sessions) as session:
            if session.get_bind().dialect.name == "postgresql":
                # Replicas share the table: each row is taken by one relay at a time, and
                # the row locks (not a table lock) are held while publishing.
                rows = (
                    await session.execute(self._pending().with_for_update(skip_locked=True))
                ).all()
                await self._publish_rows(rows)
                await self._mark(session, rows)
                return len(rows)
            await one_read(session)
            rows = (await session.execute(self._pending())).all()
        # SQLite has one write lock for the whole file: never hold it while waiting on NATS.
        # A crash between publish and mark republishes; Nats-Msg-Id makes that a no-op.
        await self._publish_rows(rows)
        if rows:
            async with transaction(self._sessions, write=True) as session:
                await batch_writes(session)  # the mark goes with the commit: one job
                await self._mark(session, rows)
        return len(rows)

    def _pending(self) -> Select[Any]:
        return (
            select(outbox.c.id, outbox.c.event_id, outbox.c.subject, outbox.c.payload)
            .where(outbox.c.published_at.is_(None))
            .order_by(outbox.c.id)
            .limit(self._batch_size)
        )

    async def _publish_rows(self, rows: Sequence[Any]) -> None:
        for row in rows:  # in order: a session's booked must not overtake its cancelled
            await self._publish(row.subject, row.payload.encode(), row.event_id)

    async def _mark(self, session: AsyncSession, rows: Sequence[Any]) -> None:
        if rows:
            await session.execute(
                update(outbox)
                .where(outbox.c.id.in_([r.id for r in rows]))
                .values(published_at=utcnow())
            )
        self.published += len(rows)
