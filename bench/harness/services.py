"""Service starters: each service as its own process (``python -m services.<name>``), the
Twilio sandbox, Radicale and a bare uvicorn app, ready before they are returned; and a
look into a service's database."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from bench.harness.processes import Child, Stack, log
from shared.natsd import free_port
from tools.kit.postgres import plain_url


@dataclass
class Service:
    child: Child
    url: str


async def start_service(
    stack: Stack,
    name: str,
    port_variable: str,
    *,
    module: str | None = None,
    ready: str = "/readyz",
    port: int | None = None,
    **env: str,
) -> Service:
    """``python -m services.<name>`` (or ``module``) on ``port`` (default: a free one);
    waits for ``ready``."""
    port = port or free_port()
    child = stack.start_child(
        name,
        [sys.executable, "-m", module or f"services.{name}"],
        stack.service_env(port_variable, port, **env),
    )
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    await child.wait_ready(f"{url}{ready}", timeout=60)
    log(f"{name} on {url} ready in {time.perf_counter() - started:.1f}s (log {child.log_path})")
    return Service(child, url)


async def start_booking(stack: Stack, database_url: str | None = None, **env: str) -> Service:
    """Booking in production mode (SQLite under ``VAR_DIR`` unless ``database_url``)."""
    if database_url:
        env["BOOKING_DATABASE_URL"] = database_url
    # Production refuses the documented development secret key: a bench key of its own.
    env.setdefault("BOOKING_SECRET_KEY", "bench-" + stack.admin_key)
    return await start_service(stack, "booking", "BOOKING_PORT", APP_ENV="production", **env)


def booking_db_path(stack: Stack) -> Path:
    """The default SQLite file of booking under ``VAR_DIR`` (see ``sqlite_url``)."""
    return stack.tmp / "var" / "booking.db"


async def start_referrals(stack: Stack, database_url: str | None = None) -> Service:
    """Referrals in development mode: production refuses http:// webhooks, and a bench's
    receiver is on 127.0.0.1 (which the outbound policy refuses unless listed)."""
    env = {"REFERRALS_DATABASE_URL": database_url} if database_url else {}
    return await start_service(
        stack,
        "referrals",
        "REFERRALS_PORT",
        APP_ENV="development",
        OUTBOUND_ALLOWED_HOSTS="127.0.0.1:*",
        **env,
    )


async def start_reminders(
    stack: Stack,
    name: str,
    sandbox_url: str,
    database_url: str,
    port: int | None = None,
    **env: str,
) -> Service:
    """Reminders sending to the sandbox; returned once it holds the scheduler lease."""
    service = await start_service(
        stack,
        name,
        "REMINDERS_PORT",
        module="services.reminders",
        port=port,
        REMINDERS_DATABASE_URL=database_url,
        TWILIO_API_BASE_URL=sandbox_url,
        **env,
    )
    async with httpx.AsyncClient(timeout=5) as client:
        while (await client.get(f"{service.url}/readyz")).json().get("role") != "active":
            await asyncio.sleep(0.1)
    log(f"{name} active")
    return service


async def start_sandbox(
    stack: Stack, inbound_url: str = "http://127.0.0.1:9/twilio/inbound"
) -> Service:
    """The Twilio sandbox (``python -m tools.twilio_sandbox``); nobody replies unless
    ``inbound_url`` points at a service, callbacks go to each message's StatusCallback."""
    port = free_port()
    env = stack.env(SANDBOX_PORT=str(port), SANDBOX_INBOUND_URL=inbound_url)
    child = stack.start_child("sandbox", [sys.executable, "-m", "tools.twilio_sandbox"], env)
    url = f"http://127.0.0.1:{port}"
    await child.wait_ready(f"{url}/_sandbox/health")
    log(f"sandbox on {url}")
    return Service(child, url)


async def reset_sandbox(url: str) -> None:
    """Forget every message the sandbox holds (a run's counts start from nothing)."""
    async with httpx.AsyncClient(timeout=60) as http:
        (await http.post(f"{url}/_sandbox/reset")).raise_for_status()


async def start_radicale(stack: Stack) -> tuple[Service, Path]:
    """Radicale (CalDAV, filesystem storage, no auth); returns it and its storage folder."""
    port = free_port()
    storage = stack.tmp / "radicale"
    argv = [sys.executable, "-m", "radicale", "--server-hosts", f"127.0.0.1:{port}"]
    argv += ["--auth-type", "none", "--storage-filesystem-folder", str(storage)]
    child = stack.start_child("radicale", argv, stack.env())
    await child.wait_port(port)
    url = f"http://127.0.0.1:{port}"
    log(f"radicale on {url} (storage {storage})")
    return Service(child, url), storage


async def start_uvicorn(stack: Stack, name: str, app: str, app_dir: Path) -> Service:
    """A bare ASGI app (``module:attribute`` under ``app_dir``) under uvicorn, like a service."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", app, "--app-dir", str(app_dir)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    child = stack.start_child(name, [*argv, "--no-access-log"], stack.env())
    url = f"http://127.0.0.1:{port}"
    await child.wait_ready(f"{url}/healthz", timeout=30)
    return Service(child, url)


def count(db: Path | str, query: str) -> int:
    """A count from a service's database (a SQLite file, or a PostgreSQL URL), read-only."""
    if isinstance(db, str):
        with psycopg.connect(plain_url(db)) as conn:
            row = conn.execute(query).fetchone()
            return int(row[0]) if row else 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        conn.execute("PRAGMA busy_timeout=5000")
        return int(conn.execute(query).fetchone()[0])
