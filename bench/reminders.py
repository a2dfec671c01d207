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
4. Senders: ``--pair`` messages (2,000) due at once, no limit, sent by one reminders
   process and then by two sharing one database (the second a standby: it only sends,
   taking from the ``reminders.due`` work queue): texts/s with two senders vs one.
   Two processes on one SQLite file contend for its lock: pass ``--database-url`` with
   PostgreSQL for the figure a deployment would see.
5. Anchor: the plain twilio SDK (``create_async``, 16 at once, no status callbacks) sends
   up to 2,000 texts into the same sandbox; the burst's rate is printed beside it with the
   ratio (issue 12's floor: 0.5).
6. Schedules (direction 4): the burst also times APScheduler alone (due until the job
   store is empty), printed beside ``--messages`` raw JetStream message schedules due at
   one instant and taken by a pull consumer: what moving one-shot texts would gain.

Run from the project root::

    .venv/bin/python bench/reminders.py            # ~8 minutes on 2 cores
    .venv/bin/python bench/reminders.py --messages 2000 --limited 300 --events 1000   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.harness import (  # noqa: E402
    Stack,
    arguments,
    count,
    latency_summary,
    log,
    machine,
    main,
    reset_sandbox,
    service_log_findings,
    start_reminders,
    start_sandbox,
    start_service,
    table,
    wait_until,
)
from bench.harness.anchors import raw_jetstream, schedules_anchor, sdk_anchor  # noqa: E402
from shared import events  # noqa: E402
from tools.kit.events import MEDICAL_MASSAGE, client_ref, publish, session_event  # noqa: E402
from tools.kit.postgres import reset_schema  # noqa: E402

LOCATION = events.LocationRef(
    id="loc-bench",
    name="Bench Clinic",
    timezone="America/New_York",
    address="1 Benchmark Plaza",
    phone="+12125550100",
)
THERAPIST = events.TherapistRef(id="t1", display_name="Therapist")
ALL_DAY = {"start": "00:00", "end": "24:00"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = arguments(
        __doc__,
        budget=900.0,
        database="a PostgreSQL URL for the service (its public schema is reset per instance); "
        "default: a SQLite file per instance",
    )
    p.add_argument("--messages", type=int, default=10_000, help="burst size (default 10,000)")
    p.add_argument("--limited", type=int, default=1_000, help="messages of the rate-limit run")
    p.add_argument("--rate", type=float, default=50.0, help="SMS_RATE_PER_SECOND of that run")
    p.add_argument("--events", type=int, default=5_000, help="booked events of the events run")
    p.add_argument("--pair", type=int, default=2_000, help="messages of the 1 vs 2 senders runs")
    p.add_argument(
        "--lead",
        type=float,
        default=0.0,
        help="seconds from start to the due time (default: enough to plan the burst)",
    )
    args = p.parse_args(argv)
    counts = (args.events, args.messages, args.limited, args.pair)
    if min(counts) < 0 or not any(counts) or args.rate <= 0:
        p.error("counts must be >= 0 (0 skips that run, one at least runs), --rate > 0")
    return args


# ---------------------------------------------------------------------------------------
# Events and the service


def booked_event(start: datetime, n: int) -> events.CloudEvent[Any]:
    client = client_ref(first_name="Bench", phone=f"+1646{n:07d}")
    return session_event(
        start=start, client=client, therapist=THERAPIST, location=LOCATION, service=MEDICAL_MASSAGE
    )


async def reminders_instance(
    stack: Stack, name: str, sandbox_url: str, rate: float, database_url: str | None
) -> tuple[Any, str, Path | str]:
    """A fresh reminders: its own SQLite file, or the PostgreSQL database emptied first."""
    db: Path | str = stack.tmp / f"{name}.db"
    url = f"sqlite+aiosqlite:///{db}"
    if database_url:
        reset_schema(database_url)
        db = url = database_url
    service = await start_reminders(
        stack,
        name,
        sandbox_url,
        url,
        SMS_RATE_PER_SECOND=str(rate),
        LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
    )
    return service.child, service.url, db


async def put_rules(url: str, key: str, rules: list[dict[str, Any]]) -> None:
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {key}"}) as c:
        answer = await c.put(
            f"{url}/v1/rules", json={"defaults": {"rules": rules, "quiet_hours": ALL_DAY}}
        )
        answer.raise_for_status()


# ---------------------------------------------------------------------------------------
# 1 and 2: messages due at the same instant


async def burst(
    stack: Stack,
    args: argparse.Namespace,
    sandbox_url: str,
    name: str,
    n: int,
    rate: float,
    plan_rate: float,
    senders: int = 1,
) -> dict[str, Any]:
    """``n`` reminders due at one instant, far enough ahead (from the measured planning
    rate) that every job is stored before it; ``senders`` reminders processes send them."""
    child, url, db = await reminders_instance(stack, name, sandbox_url, rate, args.database_url)
    standbys = [
        await start_service(
            stack,
            f"{name}-{k}",
            "REMINDERS_PORT",
            module="services.reminders",
            REMINDERS_DATABASE_URL=db if isinstance(db, str) else f"sqlite+aiosqlite:///{db}",
            TWILIO_API_BASE_URL=sandbox_url,
            SMS_RATE_PER_SECOND=str(rate),
            LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        )
        for k in range(2, senders + 1)
    ]
    await reset_sandbox(sandbox_url)
    await put_rules(
        url, stack.admin_key, [{"name": "reminder_1h", "kind": "reminder", "offset_minutes": -60}]
    )
    lead = args.lead or max(20.0, 1.5 * n / plan_rate + 10)
    due = (datetime.now(UTC) + timedelta(seconds=lead)).replace(microsecond=0)
    items = [booked_event(due + timedelta(hours=1), i) for i in range(n)]
    log(f"{name}: publishing {n} booked events, reminders due at {due:%H:%M:%S} (+{lead:.0f}s)")
    await publish(str(stack.nats_url), *items, in_flight=500)
    await wait_until(
        lambda: count(db, "SELECT count(*) FROM apscheduler_jobs") >= n,
        timeout=lead + 600,
        what="every reminder job to be stored",
    )
    spare = (due - datetime.now(UTC)).total_seconds()
    due_perf = time.perf_counter() + spare
    if spare <= 0:
        raise SystemExit(f"planning took longer than the lead; rerun with --lead {lead * 2:.0f}")
    log(f"{name}: {n} jobs stored {spare:.1f}s before they fall due")
    # APScheduler's part alone: a fired one-shot job leaves the store (direction 4's figure).
    fired = asyncio.create_task(
        wait_until(
            lambda: count(db, "SELECT count(*) FROM apscheduler_jobs") == 0,
            timeout=600,
            what="every job to fire",
            every=0.1,
        )
    )
    await wait_until(
        lambda: count(db, "SELECT count(*) FROM messages WHERE provider_sid IS NOT NULL") >= n,
        timeout=600,
        what="every message to be sent",
        every=0.5,
    )
    fired_after_due_s = await fired - due_perf
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
    for standby in standbys:
        standby.child.stop()
    child.stop()
    return {
        "messages": n,
        "senders": senders,
        "rate_limit_per_s": rate or None,
        "received": len(received),
        "duplicates": sum(c - 1 for c in per_phone.values()),
        "rejected": len(state["requests"]) - len(accepted),
        "delay_from_due": latency_summary(delays_ms),
        "sends_per_s": round((len(received) - 1) / window, 1) if window > 0 else None,
        "jobs_fired_per_s": round(n / fired_after_due_s, 1) if fired_after_due_s > 0 else None,
        "first_after_due_ms": round(delays_ms[0], 1),
        "last_after_due_ms": round(delays_ms[-1], 1),
        "log_findings": findings,
    }


# ---------------------------------------------------------------------------------------
# 3: events to jobs, beside raw JetStream


async def events_to_jobs(
    stack: Stack, args: argparse.Namespace, sandbox_url: str, n: int
) -> dict[str, Any]:
    nats_url = str(stack.nats_url)
    child, url, db = await reminders_instance(
        stack, "reminders-events", sandbox_url, 0, args.database_url
    )
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
    publish_wall = await publish(nats_url, *items, in_flight=500)
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


# ---------------------------------------------------------------------------------------


async def scenario(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    """Each run whose count is 0 is skipped."""
    stack.start_nats()
    sandbox = await start_sandbox(stack)
    # Events first: the planning rate it measures sets how far ahead the bursts fall due.
    evented = await events_to_jobs(stack, args, sandbox.url, args.events) if args.events else {}
    # Without an events run, plan for the slowest rate measured (issue 12: 75 events/s).
    plan_rate = float(evented.get("booked_to_jobs_stored_per_s", 60.0))
    figures: dict[str, Any] = {
        "benchmark": "reminders",
        "database": "postgresql" if args.database_url else "sqlite",
        "machine": machine(),
        "events": evented,
    }
    if args.messages:
        unlimited = await burst(
            stack, args, sandbox.url, "reminders-burst", args.messages, 0, plan_rate
        )
        anchor = await sdk_anchor(sandbox.url, min(args.messages, 2000))
        unlimited["sdk_anchor_per_s"] = anchor["sends_per_s"]
        sent = unlimited["sends_per_s"] or 0
        unlimited["ratio_to_sdk"] = round(sent / anchor["sends_per_s"], 3)
        unlimited["message_schedules"] = await schedules_anchor(str(stack.nats_url), args.messages)
        figures["burst"] = unlimited
    if args.limited:
        figures["rate_limited"] = await burst(
            stack, args, sandbox.url, "reminders-limited", args.limited, args.rate, plan_rate
        )
    pairs: dict[str, Any] = {}
    if args.pair:
        pairs["one"] = await burst(
            stack, args, sandbox.url, "reminders-1-sender", args.pair, 0, plan_rate, 1
        )
        pairs["two"] = await burst(
            stack, args, sandbox.url, "reminders-2-senders", args.pair, 0, plan_rate, 2
        )
    figures["senders"] = pairs
    sandbox.child.stop()
    return figures


def _run_row(label: str, run: dict[str, Any]) -> list[Any]:
    delay = run["delay_from_due"]
    return [label, delay["p50_ms"], delay["p99_ms"], run["sends_per_s"], run["duplicates"]]


def report(figures: dict[str, Any]) -> str:
    rows: list[list[Any]] = []
    b, r = figures.get("burst"), figures.get("rate_limited")
    if b:
        rows.append(_run_row(f"{b['messages']} due at once, no limit", b))
    if r:
        rows.append(_run_row(f"{r['messages']} due at once, limit {r['rate_limit_per_s']:g}/s", r))
    for run in figures["senders"].values():
        rows.append(_run_row(f"{run['messages']} due at once, {run['senders']} sender(s)", run))
    if b:
        rows.append(["plain twilio SDK, 16 at once (anchor)", "", "", b["sdk_anchor_per_s"], ""])
        ratio = f"{b['messages']} due at once / SDK (ratio, floor 0.5)"
        rows.append([ratio, "", "", b["ratio_to_sdk"], ""])
        rows.append(
            [f"{b['messages']} jobs fired by APScheduler", "", "", b["jobs_fired_per_s"], ""]
        )
        sched = b["message_schedules"]
        rows.append(
            [
                f"{sched['messages']} JetStream message schedules (raw)",
                sched["first_after_due_ms"],
                sched["last_after_due_ms"],
                sched["fired_per_s"],
                "",
            ]
        )
    parts = []
    if rows:
        parts.append(table(rows, ["run", "p50 ms from due", "p99 ms from due", "sends/s", "dupes"]))
    e = figures["events"]
    if e:
        events_rows = [
            ["booked event -> 3 jobs stored (reminders)", e["booked_to_jobs_stored_per_s"]],
            ["nats-py publish + pull consume (raw)", e["raw_publish_consume_per_s"]],
            ["ratio (floor 0.1)", e["ratio"]],
        ]
        parts.append(table(events_rows, ["events/s", f"{e['events']} events"]))
    return "\n\n".join(parts)


def cli(argv: list[str] | None = None) -> int:
    return main(scenario, parse_args(argv), report=report)


if __name__ == "__main__":
    sys.exit(cli())
