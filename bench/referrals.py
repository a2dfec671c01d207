"""Referrals throughput: referrals created over HTTP and delivered to a partner's webhook.

What it does, all on 127.0.0.1 with free ports and a temporary directory:

1. starts ``nats-server`` (JetStream) and ``python -m services.referrals`` (uvicorn, SQLite
   by default, Alembic at start) as child processes and waits for ``/readyz``;
2. starts a partner webhook receiver in this process (a bare ASGI app under uvicorn) that
   does what a careful partner does: verifies ``X-Referral-Signature`` (HMAC-SHA256, five-
   minute window) and validates the body as a FHIR R4 Bundle with ``fhir.resources.R4B``;
3. publishes ``booking.client.created`` for ``--referrals`` clients to NATS (the event-
   carried client data referrals needs), creates ``--partners`` physical-therapy partners
   whose webhooks point at the receiver, and one care plan per referral;
4. creates ``--referrals`` referrals with ``--concurrency`` clients (closed loop, each one
   keep-alive connection), after a few warm-up ones, and waits for every delivery;
5. checks: each referral delivered exactly once, every signature and Bundle valid;
6. prints a table and one JSON line (stdout, or appended to ``--json FILE``).

Delivery latency is measured from the moment the front desk's ``POST /v1/referrals`` was
sent to the moment the partner's receiver had the whole signed Bundle: commit, dispatcher
wake-up, claim, Bundle build and validation, signing, HTTP. Delivered per second is
``--referrals`` over the time from the first POST to the last delivery.

Run from the project root::

    .venv/bin/python bench/referrals.py            # defaults: 400 referrals, 8 clients
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import nats
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fhir.resources.R4B.bundle import Bundle  # noqa: E402

from bench._harness import (  # noqa: E402
    LoadResult,
    Stack,
    api_client,
    call,
    drive,
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
from services.referrals import signing  # noqa: E402
from shared import events  # noqa: E402

_SCRUBBED = ("REFERRALS_", "APP_ENV", "PUBLIC_BASE_URL", "NATS_URL", "VAR_DIR", "ADMIN_API_KEY")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--referrals", type=int, default=400, help="measured referrals (default 400)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="open loop: send this many referrals per second whatever the answers "
        "(default 0: closed loop with --concurrency clients, i.e. the saturation rate)",
    )
    p.add_argument("--warmup", type=int, default=16, help="warm-up referrals, not measured")
    p.add_argument("--partners", type=int, default=4, help="partners with a webhook (default 4)")
    p.add_argument(
        "--no-validate",
        action="store_true",
        help="receiver checks signatures only, not the FHIR Bundle",
    )
    p.add_argument(
        "--database-url",
        default=None,
        help="REFERRALS_DATABASE_URL for the service (default: SQLite file under VAR_DIR)",
    )
    p.add_argument("--budget", type=float, default=170.0, help="hard time limit in seconds")
    p.add_argument("--json", type=Path, default=None, help="append the JSON line to this file")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, database)")
    args = p.parse_args(argv)
    if args.referrals < 1 or args.concurrency < 1 or args.partners < 1 or args.warmup < 0:
        p.error("--referrals, --concurrency and --partners must be >= 1, --warmup >= 0")
    return args


# ---------------------------------------------------------------------------------------
# The partner's webhook receiver


@dataclass
class Receiver:
    """A bare ASGI app: one path per partner (``/hook/<n>``), each with its secret."""

    validate: bool
    secrets: dict[str, str] = field(default_factory=dict)
    arrivals: dict[str, list[float]] = field(default_factory=dict)
    problems: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        arrived = time.perf_counter()
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status = 200
        try:
            secret = self.secrets[scope["path"].rsplit("/", 1)[-1]]
            signing.verify(secret, headers.get("x-referral-signature"), body)
            if self.validate:
                bundle = Bundle.model_validate_json(body)
                referral_id = bundle.entry[0].resource.id  # type: ignore[index,union-attr]
            else:
                referral_id = json.loads(body)["entry"][0]["resource"]["id"]
            self.kinds[headers.get("x-referral-event", "?")] += 1
            self.arrivals.setdefault(str(referral_id), []).append(arrived)
        except Exception as exc:
            self.problems[type(exc).__name__] += 1
            status = 400
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b"{}"})


async def start_receiver(receiver: Receiver) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            receiver,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    return server, task, f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------------------------------
# Set-up


def referrals_env(
    stack: Stack, nats_url: str, port: int, database_url: str | None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    env.update(
        NATS_URL=nats_url,
        REFERRALS_PORT=str(port),
        VAR_DIR=str(stack.tmp / "var"),
        ADMIN_API_KEY=stack.admin_key,
        # Development mode: production refuses http:// webhooks, and ours is on 127.0.0.1.
        APP_ENV="development",
        # The webhook receiver runs on 127.0.0.1, which the outbound policy refuses unless listed.
        OUTBOUND_ALLOWED_HOSTS="127.0.0.1:*",
        PYTHONUNBUFFERED="1",
    )
    if database_url:
        env["REFERRALS_DATABASE_URL"] = database_url
    return env


async def publish_clients(nats_url: str, count: int) -> list[str]:
    """Booking's ``booking.client.created`` events: the data a referral carries."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    ids = []
    for n in range(count):
        client_id = str(uuid.uuid4())
        event = events.make_event(
            events.CLIENT_CREATED,
            "booking",
            events.ClientEvent(
                client=events.ClientDetails(
                    id=client_id,
                    first_name=f"Client{n}",
                    last_name="Bench",
                    date_of_birth=date(1970 + n % 40, 1 + n % 12, 1 + n % 28),
                    phone=f"+1212555{1000 + n % 9000:04d}",
                    sms_consent=True,
                )
            ),
        )
        await js.publish(
            event.type, event.model_dump_json().encode(), headers={"Nats-Msg-Id": event.id}
        )
        ids.append(client_id)
    await nc.close()
    return ids


async def set_up(
    base: str, key: str, receiver: Receiver, receiver_url: str, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], list[str]]:
    async with api_client(base, key) as api:
        partners = []
        for n in range(args.partners):
            partner = await call(
                api,
                "POST",
                "/v1/partners",
                expect=201,
                json={
                    "name": f"Bench Physio {n + 1}",
                    "discipline": "physical_therapy",
                    "phone": f"+1212555{2000 + n:04d}",
                    "email": f"physio{n + 1}@bench.example",
                    "webhook_url": f"{receiver_url}/hook/{n}",
                },
            )
            receiver.secrets[str(n)] = partner["webhook_secret"]
            partners.append(partner)
    return partners, []


async def make_plans(base: str, key: str, client_ids: list[str], concurrency: int) -> list[str]:
    clients = [api_client(base, key) for _ in range(concurrency)]
    body = {
        "goals": "Return to running",
        "baseline_pain_score": 6,
        "components": [
            {"discipline": "massage", "sessions": 6, "per_week": 1},
            {"discipline": "physical_therapy", "sessions": 8, "per_week": 2},
        ],
    }
    result = await drive(
        clients,
        client_ids,
        lambda c, cid: c.post("/v1/plans", json={**body, "client_id": cid}),
        keep_bodies=True,
    )
    for c in clients:
        await c.aclose()
    if result.count(201) != len(client_ids):
        raise SystemExit(f"plans: {result.statuses} {result.bodies[:3]}")
    by_client = {b["client_id"]: b["id"] for _status, b in result.bodies}
    return [by_client[c] for c in client_ids]


async def wait_known(base: str, key: str, client_id: str, timeout: float = 60) -> None:
    """The clients consumer applies events in order: the last one known means all are."""
    deadline = time.monotonic() + timeout
    async with api_client(base, key) as api:
        while (await api.get(f"/v1/clients/{client_id}")).status_code != 200:
            if time.monotonic() > deadline:
                raise SystemExit("referrals did not apply the client events in time")
            await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------------------
# The run


async def main(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    nats_url = stack.start_nats()
    port = free_port()
    child = stack.start_child(
        "referrals",
        [sys.executable, "-m", "services.referrals"],
        referrals_env(stack, nats_url, port, args.database_url),
    )
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    await child.wait_ready(f"{base}/readyz", timeout=60)
    log(f"referrals on {base} ready in {time.perf_counter() - started:.1f}s")

    receiver = Receiver(validate=not args.no_validate)
    server, server_task, receiver_url = await start_receiver(receiver)
    try:
        key = stack.admin_key
        partners, _ = await set_up(base, key, receiver, receiver_url, args)
        total = args.warmup + args.referrals
        client_ids = await publish_clients(nats_url, total)
        await wait_known(base, key, client_ids[-1])
        plan_ids = await make_plans(base, key, client_ids, args.concurrency)
        log(f"set up: {len(partners)} partners, {total} clients and plans")

        def body(n: int) -> dict[str, Any]:
            return {
                "plan_id": plan_ids[n],
                "partner_id": partners[n % len(partners)]["id"],
                "reason": "Post-operative knee rehabilitation; gait and strength",
                "diagnosis_codes": ["Z47.1", "Z96.651", "M25.561"],
                "urgency": "routine",
                "consent_to_share": True,
            }

        sent_at: dict[str, float] = {}

        async def send(client: Any, n: int) -> Any:
            start = time.perf_counter()
            response = await client.post("/v1/referrals", json=body(n))
            if response.status_code == 201:
                sent_at[response.json()["id"]] = start
            return response

        clients = [api_client(base, key) for _ in range(args.concurrency)]
        warm = await drive(clients, range(args.warmup), send)
        if warm.count(201) != args.warmup:
            raise SystemExit(f"warm-up failed: {warm.statuses} {warm.bodies[:3]}")
        warm_ids = set(sent_at)
        await _wait_delivered(receiver, warm_ids, timeout=60)
        sent_at.clear()

        for c in clients:
            await c.aclose()
        load = f"{args.rate:g}/s open loop" if args.rate else f"{args.concurrency} clients"
        log(f"measuring {args.referrals} referrals, {load}")
        cpu_before = child.cpu_seconds()
        first = time.perf_counter()
        if args.rate:
            result = await open_loop(base, key, range(args.warmup, total), send, args.rate)
        else:
            clients = [api_client(base, key) for _ in range(args.concurrency)]
            result = await drive(clients, range(args.warmup, total), send)
            for c in clients:
                await c.aclose()
        http_done = time.perf_counter()
        measured = set(sent_at)
        await _wait_delivered(receiver, measured, timeout=max(60.0, args.budget / 2))
        last = max(receiver.arrivals[r][0] for r in measured)
        cpu_after = child.cpu_seconds()
        service_cpu_ms = (
            round((cpu_after - cpu_before) * 1000 / len(measured), 1)
            if cpu_before is not None and cpu_after is not None
            else None
        )

        delivery_ms = [(receiver.arrivals[r][0] - sent_at[r]) * 1000 for r in measured]
        duplicates = sum(1 for r in measured if len(receiver.arrivals[r]) > 1)
        figures: dict[str, Any] = {
            "bench": "referrals",
            "referrals": args.referrals,
            "concurrency": None if args.rate else args.concurrency,
            "offered_rate_per_s": args.rate or None,
            "partners": args.partners,
            "database": "postgresql" if args.database_url else "sqlite",
            "validated_bundles": not args.no_validate,
            "created": result.count(201),
            "created_per_s": round(result.count(201) / (http_done - first), 1),
            "delivered_per_s": round(len(measured) / (last - first), 1),
            "post_latency": latency_summary(result.latencies_ms),
            "delivery_latency": latency_summary(delivery_ms),
            "service_cpu_ms_per_referral": service_cpu_ms,
            "duplicates": duplicates,
            "receiver_problems": dict(receiver.problems),
            "webhook_kinds": dict(receiver.kinds),
            "service_log": service_log_findings(child.log_text()),
            "machine": machine(),
        }
    finally:
        server.should_exit = True
        await server_task

    print_out(
        table(
            [
                ["referrals created /s (HTTP 201)", figures["created_per_s"]],
                ["referrals delivered /s (end to end)", figures["delivered_per_s"]],
                ["POST /v1/referrals p50 ms", figures["post_latency"]["p50_ms"]],
                ["POST /v1/referrals p99 ms", figures["post_latency"]["p99_ms"]],
                ["delivery latency p50 ms", figures["delivery_latency"]["p50_ms"]],
                ["delivery latency p90 ms", figures["delivery_latency"]["p90_ms"]],
                ["delivery latency p99 ms", figures["delivery_latency"]["p99_ms"]],
                ["delivery latency max ms", figures["delivery_latency"]["max_ms"]],
                ["service CPU ms per referral", service_cpu_ms],
                ["duplicate deliveries", duplicates],
            ],
            header=["referrals", "value"],
        )
    )
    if figures["created"] != args.referrals or duplicates or receiver.problems:
        raise SystemExit(f"check failed: {json.dumps(figures)}")
    return figures


async def open_loop(base: str, key: str, items: range, send: Any, rate: float) -> LoadResult:
    """Send one request every 1/rate seconds, each on its own, whatever the answers."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    async with httpx.AsyncClient(
        base_url=base,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
    ) as client:

        async def one(n: int) -> None:
            started = time.perf_counter()
            try:
                response = await send(client, n)
                statuses[response.status_code] += 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                statuses[0] += 1
            latencies.append((time.perf_counter() - started) * 1000)

        start = time.perf_counter()
        tasks = []
        for i, n in enumerate(items):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
    return LoadResult(latencies, statuses, errors, time.perf_counter() - start, [])


async def _wait_delivered(receiver: Receiver, ids: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(r not in receiver.arrivals for r in ids):
        if time.monotonic() > deadline:
            missing = sum(1 for r in ids if r not in receiver.arrivals)
            raise SystemExit(f"{missing} referrals were not delivered within {timeout:.0f}s")
        await asyncio.sleep(0.01)


def cli(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures = run(lambda stack: main(stack, args), budget=args.budget, keep=args.keep_tmp)
    emit_json(figures, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
