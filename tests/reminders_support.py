"""Helpers of the reminders tests: events as booking would publish them, the Twilio sandbox
over HTTP, the reminders app on a chosen port, and reminders as a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from services.reminders.settings import RemindersSettings
from shared.natsd import free_port
from shared.settings import PROJECT_ROOT
from tests.support import ADMIN_KEY, eventually, interrupt
from tools.kit.events import SessionStory
from tools.kit.events import publish as publish
from tools.twilio_sandbox import SandboxSettings, create_app, serve_in_thread

#: The whole day is allowed unless a test says otherwise, so tests pass at any hour.
ALL_DAY = {"quiet_hours_start": "00:00", "quiet_hours_end": "24:00"}
#: One session's story, told as booking's events (a phone no other test of this run uses).
Booking = SessionStory


def now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------
# The sandbox


class Sandbox:
    """The Twilio sandbox served on a thread, driven over HTTP like a test phone would."""

    def __init__(self, url: str, app: FastAPI) -> None:
        self.url = url
        self.app = app

    def point_inbound_at(self, reminders_url: str) -> None:
        self.app.state.sandbox.settings.inbound_url = f"{reminders_url}/twilio/inbound"

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            answer = await client.request(method, path, **kwargs)
        answer.raise_for_status()
        return answer.json()

    async def reset(self) -> None:
        await self._call("POST", "/_sandbox/reset")

    async def state(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/_sandbox/messages"))

    async def to(self, phone: str) -> list[dict[str, Any]]:
        """Messages the clinic sent to ``phone`` through the API (not TwiML answers)."""
        return [
            m
            for m in (await self.state())["messages"]
            if m["to"] == phone and m["direction"] == "outbound-api"
        ]

    async def thread(self, phone: str) -> list[dict[str, Any]]:
        return [m for m in (await self.state())["messages"] if phone in (m["to"], m["from"])]

    async def requests_to(self, phone: str) -> list[dict[str, Any]]:
        return [r for r in (await self.state())["requests"] if r["to"] == phone]

    async def fault(self, **rule: Any) -> None:
        await self._call("POST", "/_sandbox/faults", json=rule)

    async def reply(self, phone: str, body: str) -> dict[str, Any]:
        """``phone`` texts the clinic; the answer carries the app's TwiML replies."""
        return dict(
            await self._call("POST", f"/_sandbox/phones/{phone}/reply", json={"body": body})
        )

    async def wait_for(
        self, phone: str, count: int = 1, status: str | None = None, timeout: float = 15
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` messages to ``phone`` exist (all in ``status`` if given)."""

        async def check() -> list[dict[str, Any]] | None:
            found = await self.to(phone)
            if len(found) < count:
                return None
            if status is not None and any(m["status"] != status for m in found):
                return None
            return found

        return await eventually(check, timeout=timeout, what=f"{count} message(s) to {phone}")


@contextmanager
def running_sandbox(**settings: Any) -> Iterator[Sandbox]:
    app = create_app(SandboxSettings(**{"step_delay_ms": 5, **settings}))
    with serve_in_thread(app) as url:
        yield Sandbox(url, app)


# ---------------------------------------------------------------------------------------
# The reminders service


def settings_for(
    database_url: str, nats_url: str, sandbox_url: str, port: int, **extra: Any
) -> RemindersSettings:
    values: dict[str, Any] = {
        "reminders_database_url": database_url,
        "nats_url": nats_url,
        "admin_api_key": ADMIN_KEY,
        "reminders_port": port,
        "public_base_url": f"http://127.0.0.1:{port}",
        "twilio_api_base_url": sandbox_url,
        "outbox_poll_seconds": 0.2,
        "retry_base_seconds": 0.05,
        "max_deliver": 3,
        "sms_rate_per_second": 0,
        "sms_retry_base_seconds": 0.05,
        "scheduler_lease_seconds": 2,
        "planner_poll_seconds": 0.2,
        **ALL_DAY,
    }
    values.update(extra)
    return RemindersSettings(**values)


async def wait_active(app: FastAPI, timeout: float = 15) -> None:
    runtime = app.state.runtime

    async def active() -> bool:
        return bool(runtime.role == "active")

    await eventually(active, timeout=timeout, what="reminders to hold the scheduler lease")


async def log_of(client: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    answer = await client.get("/v1/messages", params=params)
    assert answer.status_code == 200, answer.text
    return list(answer.json())


async def wait_log(
    client: httpx.AsyncClient,
    predicate: Any,
    timeout: float = 15,
    what: str = "the message log",
    **params: str,
) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        rows = await log_of(client, **params)
        return rows if predicate(rows) else None

    return await eventually(check, timeout=timeout, what=what)


# ---------------------------------------------------------------------------------------
# Reminders as a child process (kill -9, standby)


class Process:
    """``python -m services.reminders`` with the given environment."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.port = int(env["REMINDERS_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.reminders"],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            interrupt(self.process, timeout=15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def health(self) -> dict[str, Any] | None:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                answer = await client.get(f"{self.url}/readyz")
        except httpx.HTTPError:
            return None
        return dict(answer.json()) if answer.status_code == 200 else None

    async def wait_role(self, role: str, timeout: float = 30) -> None:
        async def check() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log()[-3000:]
            health = await self.health()
            return bool(health and health.get("role") == role)

        await eventually(check, timeout=timeout, what=f"{self.url} to be {role}")


def process_env(
    database_url: str, nats_url: str, sandbox_url: str, port: int | None = None, **extra: str
) -> dict[str, str]:
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REMINDERS_", "TWILIO_"))}
    env.update(
        REMINDERS_DATABASE_URL=database_url,
        NATS_URL=nats_url,
        ADMIN_API_KEY=ADMIN_KEY,
        REMINDERS_PORT=str(port),
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        TWILIO_API_BASE_URL=sandbox_url,
        SMS_RATE_PER_SECOND="0",
        SMS_RETRY_BASE_SECONDS="0.05",
        SCHEDULER_LEASE_SECONDS="2",
        PLANNER_POLL_SECONDS="0.2",
        OUTBOX_POLL_SECONDS="0.2",
        QUIET_HOURS_START="00:00",
        QUIET_HOURS_END="24:00",
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env
