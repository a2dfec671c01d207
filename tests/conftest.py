"""Fixtures: a real nats-server for the session, a fresh database per test (SQLite or PostgreSQL)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio

from shared.events import STREAM_SUBJECTS
from shared.natsd import EmbeddedNats, free_port
from tests.support import postgres_url, reset_postgres, sqlite_url


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), port=free_port()).start()
    yield server
    server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def nats_url(nats_server: EmbeddedNats) -> AsyncIterator[str]:
    """The session's NATS, with every stream emptied so tests do not see each other's events."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    for stream in STREAM_SUBJECTS:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.purge_stream(stream)
    await nc.close()
    yield nats_server.url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that takes this runs on SQLite and, when TEST_POSTGRES_URL is set, on PostgreSQL."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    url = postgres_url()
    if url is None:
        pytest.skip("TEST_POSTGRES_URL is not set (.ci/run sets it); PostgreSQL variant skipped")
    reset_postgres(url)
    return url


@pytest.fixture
def sqlite_database_url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path)


def pytest_collection_modifyitems(items: list[Any]) -> None:
    for item in items:
        if "database_url" in getattr(item, "fixturenames", ()) and "[postgres" in item.nodeid:
            item.add_marker(pytest.mark.postgres)
