"""SQLite with one hop per statement (``shared.sqlite_driver``): what a unit of work sees
stays as before, errors included, and a lock held by another process never stalls the loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import (
    batch_writes,
    create_engine,
    one_read,
    run_inline,
    sessionmaker_for,
    transaction,
)

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    engine = create_engine(f"sqlite:///{tmp_path / 'driver.db'}")
    made = sessionmaker_for(engine)
    async with transaction(made, write=True) as s:
        await s.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
    yield made
    await engine.dispose()


async def values(sessions: Sessions) -> list[str]:
    async with transaction(sessions) as s:
        return list((await s.scalars(text("SELECT v FROM t ORDER BY id"))).all())


async def test_batched_writes_are_seen_by_later_reads_and_fail_at_the_commit(
    sessions: Sessions,
) -> None:
    async with transaction(sessions, write=True) as s:
        await batch_writes(s)
        await s.execute(text("INSERT INTO t (v) VALUES ('a')"))
        assert await s.scalar(text("SELECT count(*) FROM t")) == 1
        await s.execute(text("INSERT INTO t (v) VALUES ('b')"))
    with pytest.raises(IntegrityError):
        async with transaction(sessions, write=True) as s:
            await batch_writes(s)
            await s.execute(text("INSERT INTO t (v) VALUES ('c')"))
            await s.execute(text("INSERT INTO t (v) VALUES ('a')"))  # taken: nothing stays
    assert await values(sessions) == ["a", "b"]


async def test_a_single_read_and_a_rolled_back_write_leave_nothing_open(sessions: Sessions) -> None:
    async with transaction(sessions) as s:
        await one_read(s)
        assert await s.scalar(text("SELECT count(*) FROM t")) == 0
    with pytest.raises(RuntimeError):
        async with transaction(sessions, write=True) as s:
            await s.execute(text("INSERT INTO t (v) VALUES ('gone')"))
            raise RuntimeError("the use case failed")
    assert await values(sessions) == []


async def test_inline_statements_wait_on_the_thread_while_another_process_writes(
    sessions: Sessions, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "driver.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t (v) VALUES ('other')")

    def release() -> None:
        time.sleep(0.4)
        other.execute("COMMIT")

    threading.Thread(target=release).start()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.create_task(ticker())
    async with transaction(sessions, write=True) as s:
        await batch_writes(s)
        await run_inline(s)
        assert await s.scalar(text("SELECT count(*) FROM t")) == 1  # after the other commit
        await s.execute(text("INSERT INTO t (v) VALUES ('mine')"))
    beat.cancel()
    other.close()
    assert ticks >= 10, "the event loop stood still while the lock was held"
    assert await values(sessions) == ["other", "mine"]
