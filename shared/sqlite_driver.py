"""aiosqlite with one thread hop per statement, and none for an empty begin or a reset.

aiosqlite runs every call on the connection's own thread: SQLAlchemy's adapter asks for a
cursor, executes, fetches and closes, four round trips through a queue, a thread switch
and an event-loop wake-up each, for every statement. Profiles of booking showed the hops,
not SQLite, as the largest cost of a booking (about 20 per booking on 2 cores). Here a
statement is one job on that thread (cursor, execute, fetch every row, close), the
``BEGIN`` is sent with the transaction's first statement, and a rollback or commit with no
transaction open (the pool's reset on return) does not leave the event loop at all.

Used through :func:`connect` as the engine's ``async_creator`` (``shared.db``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite


class _Done:
    """What a statement left behind, read on the event loop after its job."""

    __slots__ = ("description", "lastrowid", "rowcount", "rows")

    def __init__(self, cursor: sqlite3.Cursor, rows: list[Any]) -> None:
        self.description = cursor.description
        self.rowcount = cursor.rowcount
        self.lastrowid = cursor.lastrowid
        self.rows = rows


class Cursor:
    """The part of ``aiosqlite.Cursor`` SQLAlchemy's adapter uses, with every row fetched
    in the statement's job; fetching and closing cost nothing more."""

    arraysize = 1

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._done: _Done | None = None
        self._at = 0

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __await__(self) -> Any:  # ``await conn.cursor()`` as with aiosqlite
        return self.__aenter__().__await__()

    async def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> Cursor:
        self._done = await self._conn._run_statement(sql, parameters or (), many=False)
        self._at = 0
        return self

    async def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> Cursor:
        self._done = await self._conn._run_statement(sql, parameters, many=True)
        self._at = 0
        return self

    @property
    def description(self) -> Any:
        return self._done.description if self._done else None

    @property
    def rowcount(self) -> int:
        return self._done.rowcount if self._done else -1

    @property
    def lastrowid(self) -> int | None:
        return self._done.lastrowid if self._done else None

    def _take(self, n: int | None) -> list[Any]:
        rows = self._done.rows if self._done else []
        end = len(rows) if n is None else min(len(rows), self._at + n)
        taken = rows[self._at : end]
        self._at = end
        return taken

    async def fetchall(self) -> Sequence[Any]:
        return self._take(None)

    async def fetchmany(self, size: int | None = None) -> Sequence[Any]:
        return self._take(size or self.arraysize)

    async def fetchone(self) -> Any:
        taken = self._take(1)
        return taken[0] if taken else None

    async def close(self) -> None:
        self._done = None

    async def nextset(self) -> None:
        return None


class Connection(aiosqlite.Connection):
    """An aiosqlite connection whose statements are one job each (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: ``BEGIN`` (or ``BEGIN IMMEDIATE``) to send before the next statement.
        self.pending_begin: str | None = None

    def begin_later(self, sql: str) -> None:
        """Open the transaction with the next statement instead of a job of its own."""
        self.pending_begin = sql

    def cursor(self) -> Cursor:  # type: ignore[override]
        return Cursor(self)

    async def _run_statement(self, sql: str, parameters: Any, *, many: bool) -> _Done:
        begin, self.pending_begin = self.pending_begin, None
        conn = self._conn

        def job() -> _Done:
            if begin is not None:
                conn.execute(begin)
            cursor = conn.cursor()
            try:
                if many:
                    cursor.executemany(sql, parameters)
                else:
                    cursor.execute(sql, parameters)
                rows = cursor.fetchall() if cursor.description else []
                return _Done(cursor, rows)
            finally:
                cursor.close()

        return await self._execute(job)

    async def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> Any:  # type: ignore[override]
        cursor = self.cursor()
        return await cursor.execute(sql, parameters)

    def _idle(self) -> bool:
        """No transaction open and none pending: nothing to commit or roll back."""
        if self.pending_begin is not None:
            self.pending_begin = None
            return self._connection is None or not self._connection.in_transaction
        return self._connection is None or not self._connection.in_transaction

    async def commit(self) -> None:
        if not self._idle():
            await super().commit()

    async def rollback(self) -> None:
        if not self._idle():
            await super().rollback()


def connect(database: str, **kwargs: Any) -> Connection:
    """Like ``aiosqlite.connect``; the worker thread is a daemon (as SQLAlchemy makes it)."""

    def connector() -> sqlite3.Connection:
        return sqlite3.connect(database, **kwargs)

    connection = Connection(connector, 64)
    connection._thread.daemon = True
    return connection
