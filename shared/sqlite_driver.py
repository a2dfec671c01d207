"""aiosqlite with one thread hop per statement, and none for an empty begin or a reset.

aiosqlite runs every call on the connection's own thread: SQLAlchemy's adapter asks for a
cursor, executes, fetches and closes, four round trips through a queue, a thread switch
and an event-loop wake-up each, for every statement. Profiles of booking showed the hops,
not SQLite, as the largest cost of a booking (about 20 per booking on 2 cores). Here a
statement is one job on that thread (cursor, execute, fetch every row, close), the
``BEGIN`` is sent with the transaction's first statement, and a rollback or commit with no
transaction open (the pool's reset on return) does not leave the event loop at all.

A transaction may also ask for its writes to wait (:meth:`Connection.defer_writes`,
``shared.db.batch_writes``): an ``INSERT``, ``UPDATE`` or ``DELETE`` without ``RETURNING``
then goes with the next read or with the ``COMMIT``, in the same job. Its errors (a
constraint) show there, still inside the transaction, so only a unit of work that reads
neither a write's row count nor its error on its own opts in.

A transaction of a few short statements may run them on the event loop itself
(:meth:`Connection.run_inline`, ``shared.db.run_inline``): with the busy timeout at zero,
so a lock held by another process sends the rest to the connection's thread, which waits
for it as before; the ``COMMIT`` (which may checkpoint) always goes to the thread.

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

    def __init__(self, cursor: sqlite3.Cursor | None, rows: list[Any], rowcount: int = -1) -> None:
        self.description = cursor.description if cursor else None
        self.rowcount = cursor.rowcount if cursor else rowcount
        self.lastrowid = cursor.lastrowid if cursor else None
        self.rows = rows


#: A statement waiting for the next job: sql, parameters, executemany.
_Deferred = tuple[str, Any, bool]


def _is_plain_write(sql: str) -> bool:
    head = sql.lstrip()[:6].upper()
    return head in ("INSERT", "UPDATE", "DELETE") and "RETURNING" not in sql.upper()


def _run(conn: sqlite3.Connection, sql: str, parameters: Any, many: bool) -> sqlite3.Cursor:
    cursor = conn.cursor()
    if many:
        cursor.executemany(sql, parameters)
    else:
        cursor.execute(sql, parameters)
    return cursor


#: SQLITE_BUSY and SQLITE_LOCKED: another connection holds what the statement needs.
_WAITING = (5, 6)


def _work(conn: sqlite3.Connection, steps: list[_Deferred], progress: list[int]) -> _Done:
    """Run ``steps`` from ``progress[0]`` on; the rows of the last one are the answer.
    ``progress`` counts what ran, so a step that found the database locked (and did
    nothing) is where the thread takes over."""
    done = _Done(None, [])
    while progress[0] < len(steps):
        sql, parameters, many = steps[progress[0]]
        cursor = _run(conn, sql, parameters, many)
        try:
            if progress[0] == len(steps) - 1:
                done = _Done(cursor, cursor.fetchall() if cursor.description else [])
        finally:
            cursor.close()
        progress[0] += 1
    return done


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
        self._done = await self._conn._run_statement(sql, list(parameters), many=True)
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
        self._defer = False
        self._inline = False
        self._deferred: list[_Deferred] = []
        #: The busy timeout in force on the thread (``timeout`` given to ``connect``).
        self.busy_ms = 5000

    def begin_later(self, sql: str) -> None:
        """Open the transaction with the next statement instead of a job of its own."""
        self.pending_begin = sql

    def skip_deferred_begin(self) -> None:
        """A transaction of one read: its statement runs on its own (SQLite's implicit
        transaction gives it one snapshot) and no ``COMMIT`` job follows."""
        if self.pending_begin == "BEGIN":
            self.pending_begin = None

    def run_inline(self) -> None:
        """Until this transaction ends, statements run on the event loop's thread unless
        the database is locked by another process (then on the connection's thread, which
        waits); the ``COMMIT`` still goes to the thread. For short statements only: a
        booking's few reads by key and time window cost less than a hop each."""
        self._inline = True

    def defer_writes(self) -> None:
        """Until this transaction ends, plain writes wait for the next read or the commit."""
        self._defer = True

    def cursor(self) -> Cursor:  # type: ignore[override]
        return Cursor(self)

    def _take_pending(self) -> tuple[str | None, list[_Deferred]]:
        begin, self.pending_begin = self.pending_begin, None
        deferred, self._deferred = self._deferred, []
        return begin, deferred

    @staticmethod
    def _prelude(conn: sqlite3.Connection, begin: str | None, deferred: list[_Deferred]) -> None:
        if begin is not None:
            conn.execute(begin)
        for sql, parameters, many in deferred:
            _run(conn, sql, parameters, many).close()

    async def _run_statement(self, sql: str, parameters: Any, *, many: bool) -> _Done:
        if self._defer and _is_plain_write(sql):
            self._deferred.append((sql, parameters, many))
            return _Done(None, [], len(parameters) if many else 1)
        begin, deferred = self._take_pending()
        steps: list[_Deferred] = [(begin, (), False)] if begin else []
        steps += [*deferred, (sql, parameters, many)]
        conn, progress = self._conn, [0]
        if self._inline:
            try:
                return self._on_the_loop(conn, steps, progress)
            except sqlite3.OperationalError as exc:
                if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF not in _WAITING:
                    raise
                # Another process holds the lock: the rest waits for it on the thread.
        return await self._execute(lambda: _work(conn, steps, progress))

    def _on_the_loop(
        self, conn: sqlite3.Connection, steps: list[_Deferred], progress: list[int]
    ) -> _Done:
        """Run ``steps`` here, failing at once (not waiting) if the database is locked."""
        conn.execute("PRAGMA busy_timeout=0")
        try:
            return _work(conn, steps, progress)
        finally:
            conn.execute(f"PRAGMA busy_timeout={self.busy_ms}")

    async def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> Any:  # type: ignore[override]
        cursor = self.cursor()
        return await cursor.execute(sql, parameters)

    def _end(self) -> tuple[bool, str | None, list[_Deferred]]:
        """Whether a transaction is open on SQLite's side, and what still waits to go."""
        self._defer = self._inline = False
        begin, deferred = self._take_pending()
        live = self._connection is not None and self._connection.in_transaction
        return live, begin, deferred

    async def commit(self) -> None:
        live, begin, deferred = self._end()
        if not deferred:
            if live:
                await super().commit()
            return
        conn = self._conn

        def job() -> None:
            self._prelude(conn, begin, deferred)
            conn.commit()

        await self._execute(job)

    async def rollback(self) -> None:
        live, _begin, _deferred = self._end()  # what never went to SQLite is just dropped
        if live:
            await super().rollback()


def connect(database: str, **kwargs: Any) -> Connection:
    """Like ``aiosqlite.connect``; the worker thread is a daemon (as SQLAlchemy makes it)."""

    # Statements run on the connection's thread, or on the loop's (``run_inline``), one
    # at a time (SQLAlchemy's adapter awaits each), never on both at once.
    kwargs["check_same_thread"] = False

    def connector() -> sqlite3.Connection:
        return sqlite3.connect(database, **kwargs)

    connection = Connection(connector, 64)
    connection.busy_ms = int(float(kwargs.get("timeout", 5.0)) * 1000)
    connection._thread.daemon = True
    return connection
