"""Helpers the tests share: a service on a real port, a real NATS, waiting without sleeping."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nats
import uvicorn
from fastapi import FastAPI
from nats.js.api import ConsumerConfig, DeliverPolicy

from shared.natsd import free_port
from tools.kit.postgres import reset_schema

ADMIN_KEY = "test-admin-key"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T | None]], timeout: float = 10.0, what: str = "condition"
) -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def serve(app: FastAPI, port: int | None = None) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn in this event loop, on ``port`` (when its public URL must
    be known before it starts: Twilio's callbacks and the signatures name it) or a free
    one; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            task.result()  # it failed to start: say why
        return server.started

    await eventually(started, timeout=30, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await _stopped(task, server)


async def _stopped(task: asyncio.Task[None], server: uvicorn.Server, timeout: float = 60) -> None:
    """Wait for a served app to shut down; one that hangs is a failure that names what it
    waits on, and is cancelled, so its workers do not go on inside the next tests."""
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if done:
        task.result()
        return
    stuck = io.StringIO()
    for other in asyncio.all_tasks():
        if other is not asyncio.current_task():
            other.print_stack(limit=12, file=stuck)
    server.force_exit = True
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    raise AssertionError(f"the app did not shut down in {timeout}s; tasks:\n{stuck.getvalue()}")


async def wait_ready(base_url: str, timeout: float = 30.0) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:

        async def ready() -> bool:
            try:
                return (await client.get("/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(ready, timeout=timeout, what=f"{base_url}/readyz")


class EventTap:
    """A plain nats-py JetStream subscriber collecting events of some subjects."""

    def __init__(self, nats_url: str, subject: str) -> None:
        self.nats_url = nats_url
        self.subject = subject
        self.messages: list[Any] = []

    async def __aenter__(self) -> EventTap:
        self.nc = await nats.connect(self.nats_url)
        js = self.nc.jetstream()
        self.sub = await js.subscribe(
            self.subject,
            cb=self._on_message,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
            manual_ack=False,
        )
        return self

    async def _on_message(self, msg: Any) -> None:
        self.messages.append(msg)

    async def __aexit__(self, *exc: object) -> None:
        await self.sub.unsubscribe()
        await self.nc.close()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(m.data) for m in self.messages]

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        async def found() -> dict[str, Any] | None:
            return next((e for e in self.events() if predicate(e)), None)

        return await eventually(found, timeout=timeout, what=f"an event on {self.subject}")


def reset_postgres(url: str) -> None:
    """Start a PostgreSQL test database from an empty schema."""
    reset_schema(url)


def postgres_url() -> str | None:
    return os.environ.get("TEST_POSTGRES_URL")


def sqlite_url(directory: Path, name: str = "booking") -> str:
    return f"sqlite+aiosqlite:///{directory / name}.db"


def interrupt(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Ctrl-C, as a person stops a process; killed if it has not stopped in ``timeout`` s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
