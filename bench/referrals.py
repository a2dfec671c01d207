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
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import uvicorn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fhir.resources.R4B.bundle import Bundle  # noqa: E402

from bench.harness import (  # noqa: E402
    Stack,
    api_client,
    arguments,
    drive_with,
    free_port,
    latency_summary,
    log,
    machine,
    main,
    open_loop,
    service_log_findings,
    start_referrals,
    table,
)
from services.referrals import signing  # noqa: E402
from tools.kit import call  # noqa: E402
from tools.kit.care import component, partner_body, plan_body, referral_body  # noqa: E402
from tools.kit.events import client_event, publish  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = arguments(
        __doc__,
        database="REFERRALS_DATABASE_URL for the service (default: SQLite file under VAR_DIR)",
    )
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


async def publish_clients(nats_url: str, count: int) -> list[str]:
    """Booking's ``booking.client.created`` events: the data a referral carries."""
    items = [
        client_event(
            first_name=f"Client{n}",
            last_name="Bench",
            date_of_birth=date(1970 + n % 40, 1 + n % 12, 1 + n % 28),
            phone=f"+1212555{1000 + n % 9000:04d}",
        )
        for n in range(count)
    ]
    await publish(nats_url, *items)
    return [item.data.client.id for item in items]


async def set_up(
    base: str, key: str, receiver: Receiver, receiver_url: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    partners = []
    async with api_client(base, key) as api:
        for n in range(args.partners):
            body = partner_body(
                f"Bench Physio {n + 1}",
                phone=f"+1212555{2000 + n:04d}",
                email=f"physio{n + 1}@bench.example",
                webhook_url=f"{receiver_url}/hook/{n}",
            )
            partner = await call(api, "POST", "/v1/partners", expect=201, json=body)
            receiver.secrets[str(n)] = partner["webhook_secret"]
            partners.append(partner)
    return partners


PLAN: dict[str, Any] = {
    "goals": "Return to running",
    "baseline_pain_score": 6,
    "components": [component("massage", 6, 1), component("physical_therapy", 8, 2)],
}


async def make_plans(base: str, key: str, client_ids: list[str], concurrency: int) -> list[str]:
    result = await drive_with(
        base,
        key,
        concurrency,
        client_ids,
        lambda c, cid: c.post("/v1/plans", json=plan_body(cid, **PLAN)),
        keep_bodies=True,
    )
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


async def scenario(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    nats_url = stack.start_nats()
    service = await start_referrals(stack, args.database_url)
    child, base = service.child, service.url

    receiver = Receiver(validate=not args.no_validate)
    server, server_task, receiver_url = await start_receiver(receiver)
    try:
        key = stack.admin_key
        partners = await set_up(base, key, receiver, receiver_url, args)
        total = args.warmup + args.referrals
        client_ids = await publish_clients(nats_url, total)
        await wait_known(base, key, client_ids[-1])
        plan_ids = await make_plans(base, key, client_ids, args.concurrency)
        log(f"set up: {len(partners)} partners, {total} clients and plans")

        def body(n: int) -> dict[str, Any]:
            return referral_body(
                plan_ids[n],
                partners[n % len(partners)]["id"],
                reason="Post-operative knee rehabilitation; gait and strength",
                diagnosis_codes=["Z47.1", "Z96.651", "M25.561"],
            )

        sent_at: dict[str, float] = {}

        async def send(client: Any, n: int) -> Any:
            start = time.perf_counter()
            response = await client.post("/v1/referrals", json=body(n))
            if response.status_code == 201:
                sent_at[response.json()["id"]] = start
            return response

        warm = await drive_with(base, key, args.concurrency, range(args.warmup), send)
        if warm.count(201) != args.warmup:
            raise SystemExit(f"warm-up failed: {warm.statuses} {warm.bodies[:3]}")
        warm_ids = set(sent_at)
        await _wait_delivered(receiver, warm_ids, timeout=60)
        sent_at.clear()

        load = f"{args.rate:g}/s open loop" if args.rate else f"{args.concurrency} clients"
        log(f"measuring {args.referrals} referrals, {load}")
        cpu_before = child.cpu_seconds()
        first = time.perf_counter()
        if args.rate:
            result = await open_loop(base, key, range(args.warmup, total), send, args.rate)
        else:
            items = range(args.warmup, total)
            result = await drive_with(base, key, args.concurrency, items, send)
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

    return figures


def report(figures: dict[str, Any]) -> str:
    return table(
        [
            ["referrals created /s (HTTP 201)", figures["created_per_s"]],
            ["referrals delivered /s (end to end)", figures["delivered_per_s"]],
            ["POST /v1/referrals p50 ms", figures["post_latency"]["p50_ms"]],
            ["POST /v1/referrals p99 ms", figures["post_latency"]["p99_ms"]],
            ["delivery latency p50 ms", figures["delivery_latency"]["p50_ms"]],
            ["delivery latency p90 ms", figures["delivery_latency"]["p90_ms"]],
            ["delivery latency p99 ms", figures["delivery_latency"]["p99_ms"]],
            ["delivery latency max ms", figures["delivery_latency"]["max_ms"]],
            ["service CPU ms per referral", figures["service_cpu_ms_per_referral"]],
            ["duplicate deliveries", figures["duplicates"]],
        ],
        header=["referrals", "value"],
    )


def failed(figures: dict[str, Any]) -> bool:
    """Every referral created, delivered once, with a valid signature and Bundle."""
    return bool(
        figures["created"] != figures["referrals"]
        or figures["duplicates"]
        or figures["receiver_problems"]
    )


async def _wait_delivered(receiver: Receiver, ids: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(r not in receiver.arrivals for r in ids):
        if time.monotonic() > deadline:
            missing = sum(1 for r in ids if r not in receiver.arrivals)
            raise SystemExit(f"{missing} referrals were not delivered within {timeout:.0f}s")
        await asyncio.sleep(0.01)


def cli(argv: list[str] | None = None) -> int:
    return main(scenario, parse_args(argv), report=report, failed=failed)


if __name__ == "__main__":
    raise SystemExit(cli())
