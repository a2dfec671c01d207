"""Keeps APScheduler's blocking job store and our asyncio sessions from deadlocking on SQLite.

``AsyncIOScheduler`` calls its ``SQLAlchemyJobStore`` synchronously on the event loop. On
SQLite a write there waits for the database lock; if one of *our* coroutines holds that
lock in an open transaction, it can only release it when the loop runs again, which it
cannot while the job store waits: a deadlock until the busy timeout. The gate prevents it:
job store work runs in :meth:`Gate.exclusive`, which waits until no session of this
process is open and holds new ones back meanwhile. Other processes' transactions progress
on their own, so the job store just waits for them. PostgreSQL locks rows, not the
database, so there the gate is off.

Every service's :class:`~shared.uow.UnitOfWork` opens gated sessions on SQLite, so any of
them can run a :class:`~shared.scheduling.LeasedScheduler`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker


class Gate:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._open_sessions = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._reopened = asyncio.Event()
        self._reopened.set()
        self._exclusive = asyncio.Lock()

    async def enter(self) -> None:
        if not self.enabled:
            return
        while not self._reopened.is_set():
            await self._reopened.wait()
        self._open_sessions += 1
        self._idle.clear()

    def leave(self) -> None:
        if not self.enabled:
            return
        self._open_sessions -= 1
        if self._open_sessions == 0:
            self._idle.set()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """No session of this process is open inside; keep the block synchronous and short."""
        if not self.enabled:
            yield
            return
        async with self._exclusive:
            self._reopened.clear()
            try:
                while self._open_sessions:
                    await self._idle.wait()
                yield
            finally:
                self._reopened.set()


class GatedSession(AsyncSession):
    """An ``AsyncSession`` that counts itself open with the gate from enter to exit."""

    gate: Gate

    async def __aenter__(self) -> GatedSession:
        await self.gate.enter()
        try:
            await super().__aenter__()
        except BaseException:
            self.gate.leave()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await super().__aexit__(*exc)
        finally:
            self.gate.leave()


def gated_sessionmaker(engine: AsyncEngine, gate: Gate) -> async_sessionmaker[AsyncSession]:
    """Sessions that must be used as ``async with`` (``shared.db.transaction`` does)."""
    session_class = type("GatedSession", (GatedSession,), {"gate": gate})
    return async_sessionmaker(engine, class_=session_class, expire_on_commit=False)
