"""Database engines: SQLite by default, PostgreSQL in production, one API for both."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, Engine, TypeDecorator, event, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from shared import sqlite_driver

#: Execution option asking SQLite for ``BEGIN IMMEDIATE``: the write lock is taken at
#: the start, so two writers never both read "free" and then both insert.
SERIALIZED = "serialized_write"


def async_url(url: str) -> str:
    """Accept plain SQLAlchemy URLs and pick the asyncio driver for them."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("postgresql+psycopg://"):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def sync_url(url: str) -> str:
    """The blocking-driver twin of ``url`` (Alembic, APScheduler's job store)."""
    url = async_url(url)
    return url.replace("sqlite+aiosqlite://", "sqlite://").replace(
        "postgresql+asyncpg://", "postgresql+psycopg://"
    )


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An asyncio engine; SQLite gets WAL, a busy timeout and real transactions."""
    url = async_url(url)
    # SQL errors and echo never show the values (phones, names, bodies).
    kwargs.setdefault("hide_parameters", True)
    if not url.startswith("sqlite"):
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        return create_async_engine(url, pool_pre_ping=True, **kwargs)

    connect_args = {"timeout": 30, **kwargs.pop("connect_args", {})}
    parsed = make_url(url)
    if parsed.database and not parsed.query and "async_creator" not in kwargs:
        # One thread hop per statement instead of four (``shared.sqlite_driver``).
        database = parsed.database
        kwargs["async_creator"] = lambda: sqlite_driver.connect(database, **connect_args)
    engine = create_async_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(SERIALIZED, False)
        sql = "BEGIN IMMEDIATE" if immediate else "BEGIN"
        driver = conn.connection.driver_connection
        if isinstance(driver, sqlite_driver.Connection):
            driver.begin_later(sql)  # sent with the first statement, in the same job
        else:
            conn.exec_driver_sql(sql)

    return engine


def sessionmaker_for(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


#: One asyncio lock per SQLite engine: writers in this process queue in order instead of
#: polling SQLite's busy handler, which lets waiters in at random and makes p99 explode.
_sqlite_writers: weakref.WeakKeyDictionary[Engine, asyncio.Lock] = weakref.WeakKeyDictionary()


def _writer_lock(sessions: async_sessionmaker[AsyncSession]) -> asyncio.Lock | None:
    bind = sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine) or bind.dialect.name != "sqlite":
        return None
    return _sqlite_writers.setdefault(bind.sync_engine, asyncio.Lock())


@asynccontextmanager
async def transaction(
    sessions: async_sessionmaker[AsyncSession], *, write: bool = False
) -> AsyncIterator[AsyncSession]:
    """One unit of work: commits on success, rolls back on any exception.

    ``write=True`` serializes writers on SQLite (an in-process queue, then ``BEGIN
    IMMEDIATE`` against other processes); PostgreSQL relies on constraints instead, so
    the option changes nothing there.
    """
    lock = _writer_lock(sessions) if write else None
    async with lock if lock is not None else contextlib.nullcontext(), sessions() as session:
        try:
            if write:
                await session.connection(execution_options={SERIALIZED: True})
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


async def _sqlite_driver(session: AsyncSession) -> sqlite_driver.Connection | None:
    """The transaction's connection, when it is ours (SQLite); it begins the transaction."""
    raw = await (await session.connection()).get_raw_connection()
    driver = raw.driver_connection
    return driver if isinstance(driver, sqlite_driver.Connection) else None


async def batch_writes(session: AsyncSession) -> None:
    """Let this transaction's plain writes travel with its next read or its commit.

    On SQLite (``shared.sqlite_driver``) that saves a thread hop per write; a constraint
    broken by a write then raises at that read or at the commit, still inside the unit of
    work, and a write's row count is not known. For units of work that read neither;
    elsewhere (PostgreSQL) nothing changes.
    """
    driver = await _sqlite_driver(session)
    if driver is not None:
        driver.defer_writes()


async def run_inline(session: AsyncSession) -> None:
    """This write transaction's statements are few and short (reads by key and a narrow
    window): on SQLite run them on the event loop, not as a thread hop each, unless another
    process holds the lock (``shared.sqlite_driver``). Elsewhere nothing changes."""
    driver = await _sqlite_driver(session)
    if driver is not None:
        driver.run_inline()


async def one_read(session: AsyncSession) -> None:
    """This transaction is a single ``SELECT``: on SQLite it runs without ``BEGIN`` and
    ``COMMIT`` (one statement has one snapshot anyway), one thread hop instead of two.
    Call it first, and read nothing more after that statement."""
    driver = await _sqlite_driver(session)
    if driver is not None:
        driver.skip_deferred_begin()


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite (naive storage) too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def upsert_insert(dialect: str) -> Callable[..., Any]:
    """The dialect's own ``insert`` (it has ``on_conflict_do_update``), imported when first
    asked for: ``sqlalchemy.dialects.postgresql`` costs a process on SQLite 2 MB of RSS."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert
