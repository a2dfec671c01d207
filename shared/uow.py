"""The unit of work every service uses: one transaction, the events it queues in the
outbox, and what must happen once it has committed.

A use case writes inside :meth:`UnitOfWork.write`; anything that should react only to
committed work (the outbox relay, a dispatcher, a scheduler's planner) is woken by name
with :func:`after_commit`. ``shared.outbox.enqueue`` does that for the relay itself, and
consumers run their handlers inside the same unit of work, so a handler's events and
wake-ups follow the same path as an HTTP request's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.db import is_sqlite, transaction
from shared.gate import Gate, gated_sessionmaker
from shared.timeutil import utcnow

log = structlog.get_logger(__name__)

#: ``session.info`` key holding what to run after the commit, in order, once each.
_AFTER_COMMIT = "uow.after_commit"

Hook = str | Callable[[], None]


def after_commit(session: AsyncSession, hook: Hook) -> None:
    """Run ``hook`` once the current transaction commits (never if it rolls back).

    A string names a waker registered with :meth:`UnitOfWork.on_commit` (``"outbox"``);
    the same hook asked for several times in one transaction runs once.
    """
    session.info.setdefault(_AFTER_COMMIT, {})[hook] = None


class UnitOfWork:
    """Transactions on one database, and the wakers to call after their commits.

    On SQLite the sessions are gated (:mod:`shared.gate`) so a scheduler's blocking job
    store can wait for them; on PostgreSQL the gate is off.
    """

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.clock = clock
        self.gate = Gate(enabled=is_sqlite(engine))
        self.sessions: async_sessionmaker[AsyncSession] = gated_sessionmaker(engine, self.gate)
        self._wakers: dict[str, list[Callable[[], None]]] = {}

    def on_commit(self, name: str, waker: Callable[[], None]) -> None:
        """Call ``waker`` after every commit that asked for ``name``."""
        self._wakers.setdefault(name, []).append(waker)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A serialized write transaction; its after-commit hooks run once it committed."""
        async with transaction(self.sessions, write=True) as session:
            yield session
            hooks = session.info.pop(_AFTER_COMMIT, None)
        if hooks:
            self._run(hooks)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A transaction that only reads (it may still write, without serializing)."""
        async with transaction(self.sessions) as session:
            yield session
            hooks = session.info.pop(_AFTER_COMMIT, None)
        if hooks:
            self._run(hooks)

    def _run(self, hooks: dict[Hook, None]) -> None:
        for hook in hooks:
            if callable(hook):
                hook()
                continue
            for waker in self._wakers.get(hook, ()):
                waker()
