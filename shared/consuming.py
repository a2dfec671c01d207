"""A fetched batch of events applied in one transaction, with their inbox rows.

One transaction per event made every event pay for a write lock, a commit and a dozen
round trips to the database driver's thread; a pull consumer fetches its events in
batches anyway. Here each message's task hands its event to :meth:`InboxBatch.apply` and
waits: the first of them applies every event queued by then (inbox rows claimed in two
statements, an optional ``prepare`` loading the rows the handlers will read, then each
handler in order) in one ``uow.write()``, commits once, runs the after-commit hooks once,
and answers every task; each task then acks its own message. Should the batch fail as a
whole, the event whose handler raised is applied again alone and the others again
together (each alone when the failure was not a handler's: the claim, the prepare or the
commit), so one bad event neither rolls back nor redelivers its batch-mates: only its own
task sees the error (and retries or dead-letters as before).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from shared.events import CloudEvent
from shared.inbox import claim_many
from shared.uow import UnitOfWork

log = structlog.get_logger(__name__)

Apply = Callable[[AsyncSession, CloudEvent[Any]], Awaitable[None]]
#: Loads what a batch's handlers will read (one query per table instead of one per event).
Prepare = Callable[[AsyncSession, Sequence[CloudEvent[Any]]], Awaitable[None]]

#: Events applied in one transaction at most (a fetch brings no more than its batch).
MAX_BATCH = 256


class InboxBatch:
    """The events of one consumer waiting for, or in, the next transaction."""

    def __init__(
        self,
        name: str,
        uow: UnitOfWork,
        handler: Apply,
        prepare: Prepare | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.name = name
        self._uow = uow
        self._handler = handler
        self._prepare = prepare
        self._max_batch = max_batch
        self._pending: list[tuple[CloudEvent[Any], asyncio.Future[None]]] = []
        self._leading = False
        #: Transactions committed and events applied in them (for benches and tests).
        self.batches = 0
        self.applied = 0

    async def apply(self, event: CloudEvent[Any]) -> None:
        """Apply ``event`` once (the inbox); returns when its transaction has committed,
        raises what its handler raised when it was applied alone."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((event, future))
        if not self._leading:
            self._leading = True
            try:
                # Let the batch-mates fetched with this event queue theirs first.
                await asyncio.sleep(0)
                while self._pending:
                    batch = self._pending[: self._max_batch]
                    del self._pending[: len(batch)]
                    await self._apply(batch)
            except BaseException:
                for _, other in self._pending:
                    if not other.done():
                        other.set_exception(RuntimeError("the consumer is stopping"))
                self._pending.clear()
                if future.done():
                    future.exception()  # retrieved: this task raises its own cancellation
                raise
            finally:
                self._leading = False
        await future

    async def _apply(self, batch: list[tuple[CloudEvent[Any], asyncio.Future[None]]]) -> None:
        culprit: CloudEvent[Any] | None = None
        try:
            async with self._uow.write() as session:
                fresh = await claim_many(session, self.name, [event.id for event, _ in batch])
                todo: list[CloudEvent[Any]] = []
                for event, _ in batch:  # an event fetched twice is applied once
                    if event.id in fresh:
                        fresh.discard(event.id)
                        todo.append(event)
                if self._prepare is not None and todo:
                    await self._prepare(session, todo)
                for event in todo:
                    culprit = event
                    await self._handler(session, event)
                culprit = None
        except Exception as exc:
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                return
            log.info("inbox_batch.retry", consumer=self.name, size=len(batch))
            if culprit is not None:
                # The others again together, then the one whose handler raised alone.
                await self._apply([item for item in batch if item[0] is not culprit])
                await self._apply([item for item in batch if item[0] is culprit])
            else:  # the claim, the prepare or the commit failed: each alone
                for item in batch:
                    await self._apply([item])
            return
        except BaseException:  # cancelled (the service stops): nothing was committed
            for _, future in batch:
                if not future.done():
                    future.set_exception(RuntimeError("the consumer is stopping"))
            raise
        self.batches += 1
        self.applied += len(batch)
        for _, future in batch:
            if not future.done():
                future.set_result(None)


__all__ = ["MAX_BATCH", "Apply", "InboxBatch", "Prepare"]
