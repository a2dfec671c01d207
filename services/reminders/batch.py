"""Group commit: small writes from many concurrent tasks share one transaction (and
reads of one kind share one read).

A burst of sends makes thousands of tiny writes (a ledger row before each send, its
result after, two status callbacks). On SQLite each transaction takes the one write lock
and several round trips to the driver's thread; one transaction per write caps the whole
service at a few hundred writes a second. Here a caller hands its write (a coroutine
function of the session) to :meth:`GroupCommit.run` and waits: writes queued meanwhile
are applied together, committed once, and every caller gets its own result. If the
batch fails as a whole (one write hit a constraint), each write is retried alone, so one
caller's failure is never another's.

Group commit saves commits, not statements: a thousand lease takes in one transaction are
still a thousand UPDATEs, each a round trip to the driver's thread. :class:`Coalesced`
goes one step further for writes of one kind that cannot fail one another (the send
leases, the send results, the status callbacks): the items queued by concurrent callers
are written by one bulk write (an ``IN`` or an executemany) in the next group commit.
The same shape serves reads: over :class:`Reads`, the rows concurrent callers ask for
(the jobs a scheduler pass fires together) are read by one ``IN`` per table in one read
transaction, instead of a transaction and a statement per table for each caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import structlog
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.batches import Batches
from shared.events import CloudEvent
from shared.outbox import OUTBOX, outbox
from shared.timeutil import utcnow
from shared.uow import after_commit

log = structlog.get_logger(__name__)

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")
Write = Callable[[AsyncSession], Awaitable[Any]]
Transaction = Callable[[], contextlib.AbstractAsyncContextManager[AsyncSession]]


class Coalescing:
    """Runs a function of a session in a transaction, and keeps the :class:`Coalesced`
    callers made over it by name."""

    def __init__(self) -> None:
        self._coalesced: dict[str, Coalesced[Any, Any]] = {}

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        raise NotImplementedError

    def coalesced(
        self, name: str, apply: Callable[[AsyncSession, list[I]], Awaitable[list[R]]]
    ) -> Coalesced[I, R]:
        """The :class:`Coalesced` caller called ``name`` (made with ``apply`` on first use)."""
        found = self._coalesced.get(name)
        if found is None:
            found = self._coalesced[name] = Coalesced(self, apply, name)
        return found


class Reads(Coalescing):
    """Each function in a read transaction of its own: reads need no queue, only their
    items gathered (:meth:`coalesced`)."""

    def __init__(self, transaction: Transaction) -> None:
        super().__init__()
        self._transaction = transaction

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async with self._transaction() as session:
            return await work(session)


class GroupCommit(Coalescing):
    """Queues writes and applies each batch of them in one transaction
    (:class:`shared.batches.Batches`)."""

    def __init__(self, transaction: Transaction, max_batch: int = 200) -> None:
        super().__init__()
        self._transaction = transaction
        self._writes: Batches[Write, Any] = Batches(
            "group-commit", self._commit, max_batch=max_batch
        )

    @property
    def batches(self) -> int:
        return self._writes.batches

    def start(self) -> None:
        self._writes.start()

    async def stop(self, drain_seconds: float = 5.0) -> None:
        await self._writes.stop(drain_seconds)

    async def run(self, write: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Apply ``write`` in the next batch; returns its result once committed."""
        if not self._writes.running:  # not started (tests, tools): a transaction of its own
            async with self._transaction() as session:
                return await write(session)
        result: T = await self._writes.run(write)
        return result

    async def _commit(self, writes: list[Write]) -> list[Any]:
        async with self._transaction() as session:
            return [await write(session) for write in writes]


class Coalesced(Generic[I, R]):
    """Items of concurrent callers, written (or read) together by ``apply(session, items)``
    (one result per item, in order) as one write of the next group commit (or one read).

    A flush task, not a caller, hands the bulk write to the group commit and resolves
    every item once it committed, so a cancelled caller leaves no other one waiting. If
    the bulk write fails, every item in it gets the error (so ``apply`` must not let one
    item fail the others: conditional updates and inserts of new rows only)."""

    def __init__(
        self,
        group: Coalescing,
        apply: Callable[[AsyncSession, list[I]], Awaitable[list[R]]],
        name: str = "",
    ) -> None:
        self.name = name
        self._group = group
        self._apply = apply
        self._pending: list[tuple[I, asyncio.Future[R]]] = []
        self._scheduled = False  # a flush whose write has not taken its items yet
        self._flushes: set[asyncio.Task[None]] = set()

    async def run(self, item: I) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            task = asyncio.create_task(self._flush(), name="coalesced-flush")
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        return await future

    async def _flush(self) -> None:
        taken: list[tuple[I, asyncio.Future[R]]] = []

        async def write(session: AsyncSession) -> list[R]:
            if not taken:  # the first run; a retry alone writes the same items again
                taken.extend(self._pending)
                self._pending.clear()
                self._scheduled = False
            return await self._apply(session, [item for item, _ in taken])

        try:
            results = await self._group.run(write)
        except BaseException as exc:
            if not taken:  # never ran: whoever flushes next takes these items
                self._scheduled = False
            for _, future in taken:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if self._pending and not self._scheduled:
                self._scheduled = True
                task = asyncio.create_task(self._flush(), name="coalesced-flush")
                self._flushes.add(task)
                task.add_done_callback(self._flushes.discard)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(taken, results, strict=True):
            if not future.done():
                future.set_result(result)


async def enqueue_all(session: AsyncSession, items: list[CloudEvent[Any]]) -> None:
    """``shared.outbox.enqueue`` for many events: one executemany, the relay woken once."""
    if not items:
        return
    after_commit(session, OUTBOX)
    now = utcnow()
    await session.execute(
        insert(outbox),
        [
            {
                "event_id": e.id,
                "subject": e.type,
                "payload": e.model_dump_json(),
                "created_at": now,
            }
            for e in items
        ],
    )
