"""What a benchmark's figure is set beside, measured in the same run with nothing of ours:
plain JetStream publish and consume, the plain twilio SDK into the sandbox, and JetStream
message schedules (issue 12's direction 4)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
from nats.js import JetStreamContext
from nats.js import api as js_api
from twilio.http.async_http_client import AsyncTwilioHttpClient

from bench.harness.services import reset_sandbox
from services.reminders.settings import SANDBOX_FROM_NUMBER
from tools.twilio_sandbox import sandbox_client


async def _fresh_stream(
    js: JetStreamContext,
    stream: str,
    subjects: str,
    durable: str,
    consume: str | None = None,
    **config: Any,
) -> JetStreamContext.PullSubscription:
    """A file stream of ``subjects`` made anew (a rerun on the same server starts empty) and
    a durable pull subscription to ``consume`` (default: all of it)."""
    with contextlib.suppress(Exception):  # absent on a fresh server
        await js.delete_stream(stream)
    await js.add_stream(
        js_api.StreamConfig(
            name=stream, subjects=[subjects], storage=js_api.StorageType.FILE, **config
        )
    )
    return await js.pull_subscribe(consume or subjects, durable=durable, stream=stream)


async def raw_jetstream(nats_url: str, payloads: list[bytes]) -> float:
    """Events/s of a plain publish (PubAck) + pull consume (ack) of the same payloads."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    stream = "BENCHRAW"
    sub = await _fresh_stream(js, stream, "benchraw.>", "bench-raw")
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


async def sdk_anchor(sandbox_url: str, n: int, concurrency: int = 16) -> dict[str, Any]:
    """Texts/s of the plain twilio SDK (``create_async``, ``concurrency`` at once) into the
    same sandbox: what the provider side allows on this machine, with nothing of ours."""
    client = sandbox_client(sandbox_url, http_client=AsyncTwilioHttpClient())
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with slots:
            await client.messages.create_async(
                to=f"+1213556{i % 10000:04d}", from_=SANDBOX_FROM_NUMBER, body=f"anchor {i}"
            )

    await reset_sandbox(sandbox_url)
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - started
    await client.http_client.close()  # type: ignore[attr-defined]
    await reset_sandbox(sandbox_url)
    return {"messages": n, "concurrency": concurrency, "sends_per_s": round(n / wall, 1)}


async def schedules_anchor(nats_url: str, n: int, lead: float = 5.0) -> dict[str, Any]:
    """JetStream message schedules (issue 12's direction 4), raw: ``n`` messages published
    with ``Nats-Schedule: @at T`` to a stream allowing schedules, each targeting a subject a
    durable pull consumer takes (fetch 256, ack each). How fast the server turns due
    schedules into messages a sender would take, beside APScheduler's firing in the burst."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    stream = "BENCHSCHED"
    sub = await _fresh_stream(
        js, stream, "benchsched.>", "bench-sched", "benchsched.due.>", allow_msg_schedules=True
    )
    due = (datetime.now(UTC) + timedelta(seconds=lead)).replace(microsecond=0)
    at = f"@at {due:%Y-%m-%dT%H:%M:%SZ}"
    started = time.perf_counter()
    for i in range(0, n, 500):
        await asyncio.gather(
            *(
                js.publish(
                    f"benchsched.plan.{k}",
                    b"{}",
                    headers={
                        "Nats-Schedule": at,
                        "Nats-Schedule-Target": f"benchsched.due.{k}",
                        "Nats-Msg-Id": str(uuid.uuid4()),
                    },
                )
                for k in range(i, min(n, i + 500))
            )
        )
    published = time.perf_counter() - started
    if datetime.now(UTC) >= due:
        raise SystemExit(f"publishing {n} schedules took longer than {lead:.0f}s")
    arrivals: list[float] = []
    while len(arrivals) < n:
        try:
            msgs = await sub.fetch(256, timeout=1)
        except (nats.errors.TimeoutError, TimeoutError):
            if (datetime.now(UTC) - due).total_seconds() > 60:
                raise SystemExit("message schedules did not fire within 60 s") from None
            continue
        for msg in msgs:
            await msg.ack()
        arrivals.extend([time.time()] * len(msgs))
    await js.delete_stream(stream)
    await nc.close()
    last_ms = (arrivals[-1] - due.timestamp()) * 1000
    return {
        "messages": n,
        "scheduled_per_s": round(n / published, 1),
        "first_after_due_ms": round((arrivals[0] - due.timestamp()) * 1000, 1),
        "last_after_due_ms": round(last_ms, 1),
        "fired_per_s": round(n / (last_ms / 1000), 1) if last_ms > 0 else None,
    }
