"""Group commit: small writes from many concurrent tasks share one transaction.

A burst of sends makes thousands of tiny writes (a ledger row before each send, its
result after, two status callbacks). On SQLite each transaction takes the one write lock
and several round trips to the driver's thread; one transaction per write caps the whole
service at a few hundred writes a second. Here a caller hands its write (a coroutine
function of the session) to :meth:`GroupCommit.run` and waits: writes queued meanwhile
are applied together, committed once, and every caller gets its own result. If the
batch fails as a whole (one write hit a constraint), each write is retried alone, so one
caller's failure is never another's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from shared.worker import Worker

log = structlog.get_logger(__name__)

T = TypeVar("T")
Write = Callable[[AsyncSession], Awaitable[Any]]
Transaction = Callable[[], contextlib.AbstractAsyncContextManager[AsyncSession]]


class GroupCommit:
    """Queues writes and applies them in batches on a :class:`~shared.worker.Worker`."""

    def __init__(self, transaction: Transaction, max_batch: int = 200) -> None:
        self._transaction = transaction
        self._max_batch = max_batch
        self._pending: list[tuple[Write, asyncio.Future[Any]]] = []
        self._worker = Worker("group-commit", self._step, poll_seconds=None)
        self._applying = False
        self.batches = 0

    def start(self) -> None:
        self._worker.start()

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Commit what is queued (a deploy's SIGTERM must not cancel claims half way; the
        jobs waiting on them would end in tracebacks), then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_seconds):
                while self._pending or self._applying:
                    self._worker.wake()
                    await asyncio.sleep(0.01)
        await self._worker.stop()
        for _, future in self._pending:
            if not future.done():
                future.set_exception(RuntimeError("the service is stopping"))
        self._pending.clear()

    async def run(self, write: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Apply ``write`` in the next batch; returns its result once committed."""
        if not self._worker.running:  # not started (tests, tools): a transaction of its own
            async with self._transaction() as session:
                return await write(session)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((write, future))
        self._worker.wake()
        return await future

    async def _step(self) -> bool:
        """One batch; ``True`` (again at once) while more writes wait."""
        if self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: len(batch)]
            self._applying = True
            try:
                await self._apply(batch)
            finally:
                self._applying = False
        return bool(self._pending)

    async def _apply(self, batch: list[tuple[Write, asyncio.Future[Any]]]) -> None:
        results: list[Any] = []
        try:
            async with self._transaction() as session:
                for write, _ in batch:
                    results.append(await write(session))
        except asyncio.CancelledError:
            for _, future in batch:
                if not future.done():
                    future.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1:
                write_future = batch[0][1]
                if not write_future.done():
                    write_future.set_exception(exc)
                return
            log.info("batch.retry_alone", size=len(batch), error=type(exc).__name__)
            for write, future in batch:
                await self._apply([(write, future)])
            return
        self.batches += 1
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
