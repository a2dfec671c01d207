"""Calls that arrive together, handled together: the queue behind reminders' group commit
and referrals' batched creates.

Under load many small requests arrive side by side (a claim before a send, a status
callback, a referral created at the front desk). Each alone is a transaction of its own:
on SQLite the one write lock, a BEGIN and a COMMIT, and round trips to the driver's
thread. Here a caller hands its item to :meth:`Batches.run` and waits; the items queued
meanwhile go to ``handle`` together on a :class:`~shared.worker.Worker`, and every caller
gets its own result. If ``handle`` fails for the batch as a whole (a constraint one item
tripped), each item is tried alone, so one caller's failure is never another's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog

from shared.worker import Worker

log = structlog.get_logger(__name__)

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")

Waiting = tuple[I, "asyncio.Future[R]"]


class Batches(Generic[I, R]):
    """Items of concurrent callers, handed to ``handle(items)`` (one result per item, in
    order) at most ``max_batch`` at a time.

    Only started batches queue; a caller that finds them not running (a tool, a test of a
    use case) does its item alone itself, as the owners here do."""

    def __init__(
        self,
        name: str,
        handle: Callable[[list[I]], Awaitable[list[R]]],
        *,
        max_batch: int,
    ) -> None:
        self.name = name
        self._handle = handle
        self._max_batch = max_batch
        self._pending: list[Waiting[I, R]] = []
        self._worker = Worker(name, self._step, poll_seconds=None)
        self._handling = False
        #: Batches handled whole (a batch retried item by item is not counted).
        self.batches = 0

    @property
    def running(self) -> bool:
        return self._worker.running

    def start(self) -> None:
        self._worker.start()

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Handle what is queued, then stop: a deploy's SIGTERM answers the callers it has
        (a claim cancelled half way would leave its job in a traceback). What is still
        queued after ``drain_seconds`` gets an error."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_seconds):
                while self._pending or self._handling:
                    self._worker.wake()
                    await asyncio.sleep(0.01)
        await self._worker.stop()
        for _, future in self._pending:
            if not future.done():
                future.set_exception(RuntimeError("the service is stopping"))
        self._pending.clear()

    async def run(self, item: I) -> R:
        """``item``'s result, once the batch it joined was handled."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._worker.wake()
        return await future

    async def _step(self) -> bool:
        """One batch; ``True`` (again at once) while more items wait."""
        if self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: len(batch)]
            self._handling = True
            try:
                await self._apply(batch)
            finally:
                self._handling = False
        return bool(self._pending)

    async def _apply(self, batch: list[Waiting[I, R]]) -> None:
        try:
            results = await self._handle([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                if not future.done():
                    future.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            log.info(
                "batch.retry_alone", batch=self.name, size=len(batch), error=type(exc).__name__
            )
            for waiting in batch:
                await self._apply([waiting])
            return
        self.batches += 1
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
