"""Referrals throughput: referrals created over HTTP and delivered to a partner's webhook,
beside a bare FastAPI POST measured in the same run.

What it does, all on 127.0.0.1 with free ports and a temporary directory:

1. starts ``nats-server`` (JetStream) and ``python -m services.referrals`` (uvicorn, SQLite
   by default, Alembic at start) as child processes and waits for ``/readyz``;
2. starts a partner webhook receiver in this process (a bare ASGI app under uvicorn) that
   does what a careful partner does: verifies ``X-Referral-Signature`` (HMAC-SHA256, five-
   minute window) and validates the body as a FHIR R4 Bundle with ``fhir.resources.R4B``;
3. publishes ``booking.client.created`` for every referral's client to NATS (the event-
   carried client data referrals needs), creates ``--partners`` physical-therapy partners
   whose webhooks point at the receiver, and one care plan per referral;
4. saturation: creates ``--referrals`` referrals with ``--concurrency`` clients (closed
   loop, each one keep-alive connection), after a few warm-up ones, and waits for every
   delivery: referrals created per second;
5. offered load: once the service is quiet again (the burst's events relayed, answers
   recorded, deadlines planned), ``--offered-referrals`` more sent at ``--rate`` per
   second whatever the answers (open loop): the delivery latency a partner sees at that
   rate;
6. stops referrals and runs the anchor, a bare FastAPI POST (``bench/_bare_app.py``, the
   same one ``bench/booking.py`` uses) under uvicorn, with the same clients and counts:
   closed loop (median of ``--bare-rounds``) and open loop at ``--rate``;
7. checks: each referral delivered exactly once, every signature and Bundle valid;
8. prints each figure beside its anchor and the ratio, and one JSON line (stdout, or
   appended to ``--json FILE``).

Delivery latency is measured from the moment the front desk's ``POST /v1/referrals`` was
sent to the moment the partner's receiver had the whole signed Bundle: commit, dispatcher
wake-up, claim, Bundle build and validation, signing, HTTP. Delivered per second is the
saturation phase's referrals over the time from its first POST to its last delivery.

The floors (issue 12): >= 100 referrals created per second, and delivery p99 under 200 ms
at 10 per second offered.

Run from the project root::

    .venv/bin/python bench/referrals.py            # 400 referrals at 8 clients, 100 at 10/s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import uvicorn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fhir.resources.R4B.bundle import Bundle  # noqa: E402

from bench.harness import (  # noqa: E402
    Child,
    LoadResult,
    Stack,
    api_client,
    arguments,
    cpu_per_request,
    drive_with,
    free_port,
    latency_summary,
    log,
    machine,
    main,
    open_loop,
    service_log_findings,
    start_referrals,
    start_uvicorn,
    table,
)
from services.referrals import signing  # noqa: E402
from tools.kit import call  # noqa: E402
from tools.kit.care import component, partner_body, plan_body, referral_body  # noqa: E402
from tools.kit.events import client_event, publish  # noqa: E402

#: The floors of issue 12.
TARGET_CREATED_PER_S = 100.0
TARGET_DELIVERY_P99_MS = 200.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = arguments(
        __doc__,
        database="REFERRALS_DATABASE_URL for the service (default: SQLite file under VAR_DIR)",
        strict=f"exit 1 if created/s < {TARGET_CREATED_PER_S:g} or delivery p99 at the "
        f"offered rate >= {TARGET_DELIVERY_P99_MS:g} ms",
    )
    p.add_argument("--referrals", type=int, default=400, help="saturation referrals (default 400)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument(
        "--rate",
        type=float,
        default=10.0,
        help="offered load: referrals per second sent whatever the answers (default 10)",
    )
    p.add_argument(
        "--offered-referrals",
        type=int,
        default=100,
        help="referrals sent at --rate (default 100; 0 skips the offered-load phase)",
    )
    p.add_argument("--warmup", type=int, default=16, help="warm-up referrals, not measured")
    p.add_argument("--partners", type=int, default=4, help="partners with a webhook (default 4)")
    p.add_argument(
        "--bare-rounds",
        type=int,
        default=3,
        help="closed-loop rounds of the bare anchor; the median round is reported",
    )
    p.add_argument(
        "--no-validate",
        action="store_true",
        help="receiver checks signatures only, not the FHIR Bundle",
    )
    args = p.parse_args(argv)
    if (
        args.referrals < 1
        or args.concurrency < 1
        or args.partners < 1
        or args.warmup < 0
        or args.offered_referrals < 0
        or args.rate <= 0
        or args.bare_rounds < 1
    ):
        p.error(
            "--referrals, --concurrency, --partners and --bare-rounds must be >= 1, "
            "--warmup and --offered-referrals >= 0, --rate > 0"
        )
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


@dataclass
class Phase:
    """One measured batch of referrals: what the front desk saw, what the partner saw."""

    result: LoadResult
    created_per_s: float
    delivered_per_s: float
    delivery_ms: list[float]
    duplicates: int
    cpu_ms: float | None


async def measure(
    receiver: Receiver,
    child: Child,
    items: range,
    load: Callable[[range], Awaitable[LoadResult]],
    sent_at: dict[str, float],
    timeout: float,
) -> Phase:
    sent_at.clear()
    cpu_before = child.cpu_seconds()
    first = time.perf_counter()
    result = await load(items)
    http_done = time.perf_counter()
    measured = set(sent_at)
    await _wait_delivered(receiver, measured, timeout=timeout)
    last = max((receiver.arrivals[r][0] for r in measured), default=http_done)
    return Phase(
        result=result,
        created_per_s=round(result.count(201) / (http_done - first), 1),
        delivered_per_s=round(len(measured) / (last - first), 1),
        delivery_ms=[(receiver.arrivals[r][0] - sent_at[r]) * 1000 for r in measured],
        duplicates=sum(1 for r in measured if len(receiver.arrivals[r]) > 1),
        cpu_ms=cpu_per_request(cpu_before, child.cpu_seconds(), len(measured)),
    )


BARE_BODY = {
    "client_id": "c" * 26,
    "service_id": "s" * 26,
    "location_id": "l" * 26,
    "start": "2030-01-07T15:00:00+00:00",
}


async def anchor(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    """The bare FastAPI POST, with the same clients and counts as the referrals."""
    bare_app = await start_uvicorn(stack, "bare", "_bare_app:app", ROOT / "bench")
    bare, base = bare_app.child, bare_app.url

    async def send(client: Any, _n: int) -> Any:
        return await client.post("/v1/sessions", json=BARE_BODY)

    await drive_with(base, None, args.concurrency, range(args.warmup or 1), send)
    log(f"bare: {args.bare_rounds} x {args.referrals} requests with {args.concurrency} clients")
    rounds = []
    for _ in range(args.bare_rounds):
        cpu_before = bare.cpu_seconds()
        result = await drive_with(base, None, args.concurrency, range(args.referrals), send)
        rounds.append((result, cpu_per_request(cpu_before, bare.cpu_seconds(), result.requests)))
    # A round of a few hundred requests lasts well under a second: take the median round.
    rounds.sort(key=lambda r: r[0].rate(201))
    closed, cpu = rounds[len(rounds) // 2]
    opened = None
    if args.offered_referrals:
        log(f"bare: {args.offered_referrals} requests at {args.rate:g}/s")
        opened = await open_loop(base, "", range(args.offered_referrals), send, args.rate)
    bare.stop()
    return {
        "ok_per_s": round(closed.rate(201), 1),
        "ok_per_s_all_rounds": [round(r.rate(201), 1) for r, _ in rounds],
        "failed": sum(r.requests - r.count(201) for r, _ in rounds),
        "post_latency": latency_summary(closed.latencies_ms),
        "server_cpu_ms_per_request": cpu,
        "offered_latency": latency_summary(opened.latencies_ms) if opened else None,
    }


def _phase_figures(phase: Phase) -> dict[str, Any]:
    return {
        "created": phase.result.count(201),
        "created_per_s": phase.created_per_s,
        "delivered_per_s": phase.delivered_per_s,
        "post_latency": latency_summary(phase.result.latencies_ms),
        "delivery_latency": latency_summary(phase.delivery_ms),
        "service_cpu_ms_per_referral": phase.cpu_ms,
        "duplicates": phase.duplicates,
    }


async def scenario(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    nats_url = stack.start_nats()
    service = await start_referrals(stack, args.database_url)
    child, base = service.child, service.url

    receiver = Receiver(validate=not args.no_validate)
    server, server_task, receiver_url = await start_receiver(receiver)
    try:
        key = stack.admin_key
        partners = await set_up(base, key, receiver, receiver_url, args)
        total = args.warmup + args.referrals + args.offered_referrals
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
        await _wait_delivered(receiver, set(sent_at), timeout=60)

        timeout = max(60.0, args.budget / 3)
        log(f"saturation: {args.referrals} referrals, {args.concurrency} clients")
        closed = await measure(
            receiver,
            child,
            range(args.warmup, args.warmup + args.referrals),
            lambda items: drive_with(base, key, args.concurrency, items, send),
            sent_at,
            timeout,
        )
        offered = None
        quiet = 0.0
        if args.offered_referrals:
            # The burst's tail (events to relay, answers to record, deadlines to plan) is
            # not the steady state at the offered rate: wait for the service to go quiet.
            quiet = await settle(child)
            log(f"offered load: {args.offered_referrals} referrals at {args.rate:g}/s")
            offered = await measure(
                receiver,
                child,
                range(args.warmup + args.referrals, total),
                lambda items: open_loop(base, key, items, send, args.rate),
                sent_at,
                timeout,
            )
        service_log = service_log_findings(child.log_text())
    finally:
        server.should_exit = True
        await server_task
    child.stop()
    bare = await anchor(stack, args)

    created_ratio = closed.created_per_s / bare["ok_per_s"] if bare["ok_per_s"] else 0.0
    offered_p99 = latency_summary(offered.delivery_ms)["p99_ms"] if offered else None
    bare_p99 = bare["offered_latency"]["p99_ms"] if bare["offered_latency"] else None
    return {
        "bench": "referrals",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "referrals": args.referrals,
        "concurrency": args.concurrency,
        "offered_referrals": args.offered_referrals,
        "offered_rate_per_s": args.rate if args.offered_referrals else None,
        "partners": args.partners,
        "database": "postgresql" if args.database_url else "sqlite",
        "validated_bundles": not args.no_validate,
        "saturation": _phase_figures(closed),
        "offered": _phase_figures(offered) if offered else None,
        "quiet_after_saturation_s": quiet if offered else None,
        "bare": bare,
        "ratio_created_to_bare": round(created_ratio, 3),
        "ratio_delivery_p99_to_bare_post_p99": (
            round(offered_p99 / bare_p99, 1) if offered_p99 and bare_p99 else None
        ),
        "targets": {
            "created_per_s": TARGET_CREATED_PER_S,
            "created_met": closed.created_per_s >= TARGET_CREATED_PER_S,
            "delivery_p99_ms": TARGET_DELIVERY_P99_MS,
            "delivery_met": offered_p99 is not None and offered_p99 < TARGET_DELIVERY_P99_MS,
        },
        "receiver_problems": dict(receiver.problems),
        "webhook_kinds": dict(receiver.kinds),
        "service_log": service_log,
        "machine": machine(),
    }


def report(fig: dict[str, Any]) -> str:
    sat, off, bare, targets = fig["saturation"], fig["offered"], fig["bare"], fig["targets"]

    def ratio(ours: float | None, anchor: float | None) -> str:
        return f"{ours / anchor:.3f}" if ours is not None and anchor else "-"

    bare_off = bare["offered_latency"] or {}
    rows: list[list[Any]] = [
        [
            f"created /s, {fig['concurrency']} clients",
            sat["created_per_s"],
            bare["ok_per_s"],
            ratio(sat["created_per_s"], bare["ok_per_s"]),
        ],
        ["delivered /s (end to end)", sat["delivered_per_s"], bare["ok_per_s"], "-"],
        [
            "POST p50 ms",
            sat["post_latency"]["p50_ms"],
            bare["post_latency"]["p50_ms"],
            ratio(sat["post_latency"]["p50_ms"], bare["post_latency"]["p50_ms"]),
        ],
        [
            "POST p99 ms",
            sat["post_latency"]["p99_ms"],
            bare["post_latency"]["p99_ms"],
            ratio(sat["post_latency"]["p99_ms"], bare["post_latency"]["p99_ms"]),
        ],
        ["delivery p50 ms (saturated)", sat["delivery_latency"]["p50_ms"], "-", "-"],
        ["delivery p99 ms (saturated)", sat["delivery_latency"]["p99_ms"], "-", "-"],
        [
            "service CPU ms per referral",
            sat["service_cpu_ms_per_referral"],
            bare["server_cpu_ms_per_request"],
            ratio(sat["service_cpu_ms_per_referral"], bare["server_cpu_ms_per_request"]),
        ],
    ]
    if off:
        rows += [
            [
                f"delivery p50 ms at {fig['offered_rate_per_s']:g}/s",
                off["delivery_latency"]["p50_ms"],
                bare_off.get("p50_ms"),
                ratio(off["delivery_latency"]["p50_ms"], bare_off.get("p50_ms")),
            ],
            [
                f"delivery p99 ms at {fig['offered_rate_per_s']:g}/s",
                off["delivery_latency"]["p99_ms"],
                bare_off.get("p99_ms"),
                ratio(off["delivery_latency"]["p99_ms"], bare_off.get("p99_ms")),
            ],
            [
                f"delivery max ms at {fig['offered_rate_per_s']:g}/s",
                off["delivery_latency"]["max_ms"],
                bare_off.get("max_ms"),
                "-",
            ],
            [
                f"service CPU ms per referral at {fig['offered_rate_per_s']:g}/s",
                off["service_cpu_ms_per_referral"],
                "-",
                "-",
            ],
        ]
    duplicates = sat["duplicates"] + (off["duplicates"] if off else 0)
    created = "met" if targets["created_met"] else "MISSED"
    delivery = "met" if targets["delivery_met"] else "MISSED"
    lines = [
        "",
        f"Referrals benchmark: {fig['database']}, {fig['partners']} partners, anchor = bare "
        f"FastAPI POST (bench/_bare_app.py) in the same run, ratio = referrals / anchor",
        table(rows, header=["figure", "referrals", "bare anchor", "ratio"]),
        "",
        f"floor created/s >= {targets['created_per_s']:g}: {created}; "
        f"delivery p99 < {targets['delivery_p99_ms']:g} ms at {fig['offered_rate_per_s']}/s: "
        f"{delivery}",
        f"quiet {fig['quiet_after_saturation_s']}s after the saturation phase; "
        f"checks: {duplicates} duplicate deliveries, receiver problems "
        f"{fig['receiver_problems'] or 'none'}, bare failures {bare['failed']}",
    ]
    if fig["service_log"]:
        lines.append(
            "service log: " + ", ".join(f"{k} x{v}" for k, v in fig["service_log"].items())
        )
    return "\n".join(lines) + "\n"


def failed(fig: dict[str, Any], strict: bool = False) -> bool:
    """Every referral created, delivered once, with a valid signature and Bundle (and,
    with ``--strict``, both floors met)."""
    phases = [fig["saturation"], *([fig["offered"]] if fig["offered"] else [])]
    expected = fig["referrals"] + fig["offered_referrals"]
    broken = bool(
        sum(p["created"] for p in phases) != expected
        or any(p["duplicates"] for p in phases)
        or fig["receiver_problems"]
    )
    missed = not (fig["targets"]["created_met"] and fig["targets"]["delivery_met"])
    return broken or (strict and missed)


async def settle(child: Child, timeout: float = 60.0, busy: float = 0.05) -> float:
    """Wait until ``child`` uses less than ``busy`` of a core over half a second; returns
    the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        before = child.cpu_seconds()
        await asyncio.sleep(0.5)
        after = child.cpu_seconds()
        if before is None or after is None or (after - before) / 0.5 < busy:
            break
    return round(time.perf_counter() - started, 1)


async def _wait_delivered(receiver: Receiver, ids: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(r not in receiver.arrivals for r in ids):
        if time.monotonic() > deadline:
            missing = sum(1 for r in ids if r not in receiver.arrivals)
            raise SystemExit(f"{missing} referrals were not delivered within {timeout:.0f}s")
        await asyncio.sleep(0.01)


def cli(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return main(scenario, args, report=report, failed=lambda fig: failed(fig, args.strict))


if __name__ == "__main__":
    raise SystemExit(cli())
