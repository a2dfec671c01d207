"""Reminders throughput: a burst of messages due in the same minute, the rate limit, and
events per second from ``booking.session.booked`` to stored reminder jobs.

What it does, all on 127.0.0.1 with free ports and a temporary directory, every server
its own process as in production (``nats-server``, ``python -m tools.twilio_sandbox``,
``python -m services.reminders`` on SQLite with Alembic at start):

1. Events: ``--events`` ``booking.session.booked`` events (3 reminder jobs each) published
   as fast as JetStream takes them; events/s from the first publish to the last job stored,
   beside a plain nats-py JetStream publish and pull-consume (ack) of the same payloads in
   a stream of its own, in the same run. Its rate sets how far ahead the bursts fall due.
2. Burst: ``--messages`` sessions (10,000) whose one reminder falls due at the same
   instant T, published as ``booking.session.booked`` events; once every job is stored
   and T comes, the delay from T to the sandbox receiving each create request (p50, p99)
   and the send rate (messages over the time from the first to the last receipt). No
   rate limit. The sandbox plays the network too: three signed status callbacks per
   message come back to reminders while it sends.
3. Rate limit: ``--limited`` messages (1,000) due at once with ``SMS_RATE_PER_SECOND``
   = ``--rate`` (50): the observed rate.

Run from the project root::

    .venv/bin/python bench/reminders.py            # ~8 minutes on 2 cores
    .venv/bin/python bench/reminders.py --messages 2000 --limited 300 --events 1000   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import nats  # noqa: E402
import psycopg  # noqa: E402
from nats.js import api as js_api  # noqa: E402

from bench._harness import (  # noqa: E402
    Child,
    Stack,
    emit_json,
    free_port,
    latency_summary,
    log,
    machine,
    print_out,
    run,
    service_log_findings,
    table,
)
from shared import events  # noqa: E402

LOCATION = events.LocationRef(
    id="loc-bench",
    name="Bench Clinic",
    timezone="America/New_York",
    address="1 Benchmark Plaza",
    phone="+12125550100",
)
ALL_DAY = {"start": "00:00", "end": "24:00"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--messages", type=int, default=10_000, help="burst size (default 10,000)")
    p.add_argument("--limited", type=int, default=1_000, help="messages of the rate-limit run")
    p.add_argument("--rate", type=float, default=50.0, help="SMS_RATE_PER_SECOND of that run")
    p.add_argument("--events", type=int, default=5_000, help="booked events of the events run")
    p.add_argument(
        "--lead",
        type=float,
        default=0.0,
        help="seconds from start to the due time (default: enough to plan the burst)",
    )
    p.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL URL for the service (its public schema is reset per instance); "
        "default: a SQLite file per instance",
    )
    p.add_argument("--budget", type=float, default=900.0, help="hard time limit in seconds")
    p.add_argument("--json", type=Path, default=None, help="append the JSON line to this file")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, databases)")
    args = p.parse_args(argv)
    if min(args.messages, args.limited, args.events) < 1 or args.rate <= 0:
        p.error("counts must be >= 1 and --rate > 0")
    return args


# ---------------------------------------------------------------------------------------
# Processes


def booked_event(start: datetime, n: int) -> events.CloudEvent[Any]:
    session_id = str(uuid.uuid4())
    data = events.SessionEvent(
        session_id=session_id,
        version=1,
        status="booked",
        start=start,
        end=start + timedelta(hours=1),
        client=events.ClientRef(
            id=str(uuid.uuid4()), first_name="Bench", phone=f"+1646{n:07d}", sms_consent=True
        ),
        therapist=events.TherapistRef(id="t1", display_name="Therapist"),
        location=LOCATION,
        service=events.ServiceRef(
            id="svc", name="Medical massage 60", modality="medical_massage", duration_minutes=60
        ),
        room_id="room1",
    )
    return events.make_event(events.SESSION_BOOKED, "booking", data, subject=session_id)


async def start_sandbox(stack: Stack) -> tuple[Child, str]:
    port = free_port()
    env = {
        **stack_env(),
        "SANDBOX_PORT": str(port),
        # Nobody replies in this benchmark; callbacks go to each message's StatusCallback.
        "SANDBOX_INBOUND_URL": "http://127.0.0.1:9/twilio/inbound",
    }
    child = stack.start_child("sandbox", [sys.executable, "-m", "tools.twilio_sandbox"], env)
    url = f"http://127.0.0.1:{port}"
    await child.wait_ready(f"{url}/_sandbox/health")
    return child, url


def stack_env() -> dict[str, str]:

    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REMINDERS_", "TWILIO_", "SANDBOX_", "QUIET_", "SMS_"))
        and k not in {"NATS_URL", "PUBLIC_BASE_URL", "ADMIN_API_KEY", "VAR_DIR", "APP_ENV"}
    }


#: ``--database-url``: PostgreSQL instead of a SQLite file per instance.
DATABASE_URL: str | None = None


async def start_reminders(
    stack: Stack, nats_url: str, name: str, sandbox_url: str, rate: float
) -> tuple[Child, str, Path | str]:
    port = free_port()
    db: Path | str = stack.tmp / f"{name}.db"
    database_url = f"sqlite+aiosqlite:///{db}"
    if DATABASE_URL:
        reset_postgres(DATABASE_URL)
        db = database_url = DATABASE_URL
    env = {
        **stack_env(),
        "NATS_URL": nats_url,
        "REMINDERS_PORT": str(port),
        "REMINDERS_DATABASE_URL": database_url,
        "ADMIN_API_KEY": stack.admin_key,
        "TWILIO_API_BASE_URL": sandbox_url,
        "SMS_RATE_PER_SECOND": str(rate),
        "VAR_DIR": str(stack.tmp / "var"),
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        "PYTHONUNBUFFERED": "1",
    }
    child = stack.start_child(name, [sys.executable, "-m", "services.reminders"], env)
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    await child.wait_ready(f"{url}/readyz", timeout=60)
    async with httpx.AsyncClient(timeout=5) as client:
        while (await client.get(f"{url}/readyz")).json().get("role") != "active":
            await asyncio.sleep(0.1)
    log(f"{name} on {url} active in {time.perf_counter() - started:.1f}s (log {child.log_path})")
    return child, url, db


async def put_rules(url: str, key: str, rules: list[dict[str, Any]]) -> None:
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {key}"}) as c:
        answer = await c.put(
            f"{url}/v1/rules", json={"defaults": {"rules": rules, "quiet_hours": ALL_DAY}}
        )
        answer.raise_for_status()


def count(db: Path | str, query: str) -> int:
    """A count from the service's database (a SQLite file, or a PostgreSQL URL)."""
    if isinstance(db, str):
        with psycopg.connect(plain_postgres(db)) as conn:
            row = conn.execute(query).fetchone()
            return int(row[0]) if row else 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return int(conn.execute(query).fetchone()[0])


def plain_postgres(url: str) -> str:
    for driver in ("postgresql+asyncpg://", "postgresql+psycopg://"):
        url = url.replace(driver, "postgresql://")
    return url


def reset_postgres(url: str) -> None:
    """Each reminders instance of the run starts from an empty schema."""
    with psycopg.connect(plain_postgres(url), autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")


async def publish_all(nats_url: str, items: list[events.CloudEvent[Any]]) -> float:
    """Publish with PubAcks, 500 in flight; returns the wall time."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    started = time.perf_counter()
    for i in range(0, len(items), 500):
        await asyncio.gather(
            *(
                js.publish(e.type, e.model_dump_json().encode(), headers={"Nats-Msg-Id": e.id})
                for e in items[i : i + 500]
            )
        )
    wall = time.perf_counter() - started
    await nc.close()
    return wall


async def wait_until(
    predicate: Any, timeout: float, what: str, every: float = 0.25
) -> float:  # returns the time it became true (perf_counter)
    deadline = time.perf_counter() + timeout
    while True:
        if await asyncio.to_thread(predicate):
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(every)


# ---------------------------------------------------------------------------------------
# 1 and 2: messages due at the same instant


async def burst(
    stack: Stack,
    nats_url: str,
    sandbox_url: str,
    name: str,
    n: int,
    rate: float,
    lead: float,
    plan_rate: float,
) -> dict[str, Any]:
    """``n`` reminders due at one instant, far enough ahead (from the measured planning
    rate) that every job is stored before it."""
    child, url, db = await start_reminders(stack, nats_url, name, sandbox_url, rate)
    async with httpx.AsyncClient(timeout=60) as client:
        (await client.post(f"{sandbox_url}/_sandbox/reset")).raise_for_status()
    await put_rules(
        url, stack.admin_key, [{"name": "reminder_1h", "kind": "reminder", "offset_minutes": -60}]
    )
    lead = lead or max(20.0, 1.5 * n / plan_rate + 10)
    due = (datetime.now(UTC) + timedelta(seconds=lead)).replace(microsecond=0)
    items = [booked_event(due + timedelta(hours=1), i) for i in range(n)]
    log(f"{name}: publishing {n} booked events, reminders due at {due:%H:%M:%S} (+{lead:.0f}s)")
    await publish_all(nats_url, items)
    planned_at = await wait_until(
        lambda: count(db, "SELECT count(*) FROM apscheduler_jobs") >= n,
        timeout=lead + 600,
        what="every reminder job to be stored",
    )
    spare = (due - datetime.now(UTC)).total_seconds()
    if spare <= 0:
        raise SystemExit(f"planning took longer than the lead; rerun with --lead {lead * 2:.0f}")
    log(f"{name}: {n} jobs stored {spare:.1f}s before they fall due")
    await wait_until(
        lambda: count(db, "SELECT count(*) FROM messages WHERE provider_sid IS NOT NULL") >= n,
        timeout=600,
        what="every message to be sent",
        every=0.5,
    )
    _ = planned_at
    async with httpx.AsyncClient(timeout=120) as client:
        state = (await client.get(f"{sandbox_url}/_sandbox/messages")).json()
    accepted = [r for r in state["requests"] if r["http_status"] == 201]
    received = sorted(r["received_at"] for r in accepted)
    per_phone: dict[str, int] = {}
    for r in accepted:
        per_phone[r["to"]] = per_phone.get(r["to"], 0) + 1
    due_ts = due.timestamp()
    delays_ms = [(t - due_ts) * 1000 for t in received]
    window = received[-1] - received[0] if len(received) > 1 else float("nan")
    findings = service_log_findings(child.log_text())
    child.stop()
    return {
        "messages": n,
        "rate_limit_per_s": rate or None,
        "received": len(received),
        "duplicates": sum(c - 1 for c in per_phone.values()),
        "rejected": len(state["requests"]) - len(accepted),
        "delay_from_due": latency_summary(delays_ms),
        "sends_per_s": round((len(received) - 1) / window, 1) if window > 0 else None,
        "first_after_due_ms": round(delays_ms[0], 1),
        "last_after_due_ms": round(delays_ms[-1], 1),
        "log_findings": findings,
    }


# ---------------------------------------------------------------------------------------
# 3: events to jobs, beside raw JetStream


async def events_to_jobs(stack: Stack, nats_url: str, sandbox_url: str, n: int) -> dict[str, Any]:
    child, url, db = await start_reminders(stack, nats_url, "reminders-events", sandbox_url, 0)
    await put_rules(
        url,
        stack.admin_key,
        [
            {"name": "reminder_24h", "kind": "reminder", "offset_minutes": -1440},
            {"name": "reminder_2h", "kind": "reminder", "offset_minutes": -120},
            {"name": "followup", "kind": "followup", "offset_minutes": 120},
        ],
    )
    start = datetime.now(UTC) + timedelta(days=5)
    items = [booked_event(start + timedelta(minutes=i % 600), i) for i in range(n)]
    started = time.perf_counter()
    publish_wall = await publish_all(nats_url, items)
    done = await wait_until(
        lambda: count(db, "SELECT count(*) FROM apscheduler_jobs") >= 3 * n,
        timeout=900,
        what="every job of the events run",
        every=0.1,
    )
    pipeline = n / (done - started)
    findings = service_log_findings(child.log_text())
    child.stop()

    raw = await raw_jetstream(nats_url, [e.model_dump_json().encode() for e in items])
    return {
        "events": n,
        "jobs": 3 * n,
        "publish_wall_s": round(publish_wall, 2),
        "booked_to_jobs_stored_per_s": round(pipeline, 1),
        "raw_publish_consume_per_s": round(raw, 1),
        "ratio": round(pipeline / raw, 4),
        "log_findings": findings,
    }


async def raw_jetstream(nats_url: str, payloads: list[bytes]) -> float:
    """Events/s of a plain publish (PubAck) + pull consume (ack) of the same payloads."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    stream = "BENCHRAW"
    with contextlib.suppress(Exception):  # absent on a fresh server
        await js.delete_stream(stream)
    await js.add_stream(
        js_api.StreamConfig(name=stream, subjects=["benchraw.>"], storage=js_api.StorageType.FILE)
    )
    sub = await js.pull_subscribe("benchraw.>", durable="bench-raw", stream=stream)
    consumed = 0

    async def consume() -> None:
        nonlocal consumed
        while consumed < len(payloads):
            try:
                msgs = await sub.fetch(256, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                json.loads(msg.data)  # as a handler would parse it
                await msg.ack()
            consumed += len(msgs)

    started = time.perf_counter()
    consumer = asyncio.create_task(consume())
    for i in range(0, len(payloads), 500):
        await asyncio.gather(
            *(
                js.publish("benchraw.session.booked", p, headers={"Nats-Msg-Id": str(uuid.uuid4())})
                for p in payloads[i : i + 500]
            )
        )
    await consumer
    wall = time.perf_counter() - started
    await js.delete_stream(stream)
    await nc.close()
    return len(payloads) / wall


# ---------------------------------------------------------------------------------------


async def main(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    nats_url = stack.start_nats()
    sandbox, sandbox_url = await start_sandbox(stack)
    log(f"sandbox on {sandbox_url}")
    # Events first: the planning rate it measures sets how far ahead the bursts fall due.
    evented = await events_to_jobs(stack, nats_url, sandbox_url, args.events)
    plan_rate = float(evented["booked_to_jobs_stored_per_s"])
    unlimited = await burst(
        stack, nats_url, sandbox_url, "reminders-burst", args.messages, 0, args.lead, plan_rate
    )
    limited = await burst(
        stack,
        nats_url,
        sandbox_url,
        "reminders-limited",
        args.limited,
        args.rate,
        args.lead,
        plan_rate,
    )
    sandbox.stop()
    return {
        "benchmark": "reminders",
        "database": "postgresql" if DATABASE_URL else "sqlite",
        "machine": machine(),
        "burst": unlimited,
        "rate_limited": limited,
        "events": evented,
    }


def report(figures: dict[str, Any]) -> None:
    b, r, e = figures["burst"], figures["rate_limited"], figures["events"]
    rows = [
        [
            f"{b['messages']} due at once, no limit",
            b["delay_from_due"]["p50_ms"],
            b["delay_from_due"]["p99_ms"],
            b["sends_per_s"],
            b["duplicates"],
        ],
        [
            f"{r['messages']} due at once, limit {r['rate_limit_per_s']:g}/s",
            r["delay_from_due"]["p50_ms"],
            r["delay_from_due"]["p99_ms"],
            r["sends_per_s"],
            r["duplicates"],
        ],
    ]
    print_out(table(rows, ["run", "p50 ms from due", "p99 ms from due", "sends/s", "dupes"]))
    print_out("")
    print_out(
        table(
            [
                ["booked event -> 3 jobs stored (reminders)", e["booked_to_jobs_stored_per_s"]],
                ["nats-py publish + pull consume (raw)", e["raw_publish_consume_per_s"]],
                ["ratio", e["ratio"]],
            ],
            ["events/s", f"{e['events']} events"],
        )
    )


if __name__ == "__main__":
    arguments = parse_args()
    DATABASE_URL = arguments.database_url
    result = run(
        lambda stack: main(stack, arguments), budget=arguments.budget, keep=arguments.keep_tmp
    )
    report(result)
    emit_json(result, arguments.json)
