"""Keeps APScheduler's blocking job store and our asyncio sessions from deadlocking on SQLite,
and keeps this process's writers from fighting over SQLite's lock.

``AsyncIOScheduler`` calls its ``SQLAlchemyJobStore`` synchronously on the event loop. On
SQLite a write there waits for the database lock; if one of *our* coroutines holds that
lock in an open transaction, it can only release it when the loop runs again, which it
cannot while the job store waits: a deadlock until the busy timeout. The gate prevents it:
job store work runs in :meth:`Gate.exclusive`, which waits until no session of this
process is open and holds new ones back meanwhile. Other processes' transactions progress
on their own, so the job store just waits for them. PostgreSQL locks rows, not the
database, so there the gate is off.

Writers of this process also queue on an asyncio lock before ``BEGIN IMMEDIATE``: SQLite
lets one writer in at a time anyway, and its busy handler makes the others sleep in
growing steps, which under a burst (hundreds of sends at once) costs far more than waiting
in line.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from shared.db import SERIALIZED


class Gate:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._open_sessions = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._reopened = asyncio.Event()
        self._reopened.set()
        self._exclusive = asyncio.Lock()
        #: One writing transaction of this process at a time.
        self.writer = asyncio.Lock()

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
    """An ``AsyncSession`` that counts itself open with the gate from enter to exit, and
    holds the writer lock from a serialized ``connection()`` (``transaction(write=True)``)
    until it closes."""

    gate: Gate
    _writing = False

    async def __aenter__(self) -> GatedSession:
        await self.gate.enter()
        try:
            await super().__aenter__()
        except BaseException:
            self.gate.leave()
            raise
        return self

    async def connection(self, *args: Any, **kwargs: Any) -> AsyncConnection:
        options = kwargs.get("execution_options") or {}
        if self.gate.enabled and options.get(SERIALIZED) and not self._writing:
            await self.gate.writer.acquire()
            self._writing = True
        return await super().connection(*args, **kwargs)

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await super().__aexit__(*exc)
        finally:
            if self._writing:
                self._writing = False
                self.gate.writer.release()
            self.gate.leave()


def gated_sessionmaker(engine: AsyncEngine, gate: Gate) -> async_sessionmaker[AsyncSession]:
    """Sessions that must be used as ``async with`` (``shared.db.transaction`` does)."""
    session_class = type("GatedSession", (GatedSession,), {"gate": gate})
    return async_sessionmaker(engine, class_=session_class, expire_on_commit=False)
