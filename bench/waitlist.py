"""Waitlist offers: from a cancel to the offer event on NATS and to the offer text at the
Twilio sandbox; then the offered clients reply BOOK, two at once for each slot.

What it does, all on 127.0.0.1 with free ports and a temporary directory:

1. starts ``nats-server`` (JetStream), ``python -m services.booking``, the Twilio sandbox
   and ``python -m services.reminders`` (texts at once: no quiet hours, no rate limit) as
   child processes;
2. creates one location with ``--therapists`` therapists and rooms, a treatment, the
   clients, ``--cancels`` sessions over the next days and ``--entries`` waitlist entries
   (windows of 3 to 14 days, a third of them naming a time of day, a tenth a therapist);
3. listens to ``booking.waitlist.offered`` on NATS (a plain JetStream subscriber), then
   cancels the sessions spread over ``--seconds`` (open loop: 100 in a minute by default);
4. reports the time from each cancel request to the first offer of its slot arriving on
   NATS and to the first offer text of that slot at the sandbox (p50/p99), offers per
   slot, and checks that no client got two offers for one slot and no slot more than
   three;
5. the first two clients offered each slot reply ``BOOK`` at the same moment (through the
   sandbox, as phones would): checks that no slot is booked twice and counts the slots
   filled and the "taken" texts.

Run from the project root::

    .venv/bin/python bench/waitlist.py            # 1,000 entries, 100 cancels in 60 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    api_client,
    arguments,
    drive_with,
    latency_summary,
    log,
    main,
    open_loop,
    service_log_findings,
    start_booking,
    start_reminders,
    start_sandbox,
    table,
)
from bench.harness.processes import Stack  # noqa: E402
from shared.natsd import free_port  # noqa: E402
from tools.kit import ClinicBuilder, Hours  # noqa: E402

TIMEZONE = "America/New_York"
TIMES = ("morning", "afternoon", "evening")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = arguments(__doc__, budget=500.0, database="BOOKING_DATABASE_URL for the service")
    p.add_argument("--entries", type=int, default=1000, help="waitlist entries (default 1000)")
    p.add_argument("--cancels", type=int, default=100, help="sessions cancelled (default 100)")
    p.add_argument("--seconds", type=float, default=60.0, help="cancels spread over (60)")
    p.add_argument("--therapists", type=int, default=6, help="therapists (and rooms)")
    p.add_argument("--seed", type=int, default=7, help="random seed of the entries")
    return p.parse_args(argv)


async def set_up(base: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    clinic = ClinicBuilder()
    clinic.location(
        "Bench Waitlist Clinic", rooms=args.therapists, timezone=TIMEZONE, min_notice_minutes=60
    )
    clinic.treatment("Medical massage 60", duration_minutes=60, buffer_minutes=0)
    for n in range(args.therapists):
        clinic.therapist(f"Therapist {n + 1:02d}", hours=[Hours(0, range(7), "08:00", "20:00")])
    async with api_client(base, key) as api:
        made = await clinic.create(api)
    ids = {
        "location_id": made.location["id"],
        "service_id": made.treatment["id"],
        "therapist_ids": made.ids("therapists"),
    }
    bodies = [
        {
            "first_name": f"Wait{n}",
            "last_name": "Bench",
            "phone": f"+1646555{n:04d}",
            "sms_consent": True,
        }
        for n in range(args.entries + args.cancels)
    ]
    created = await drive_with(base, key, 8, bodies, _post("/v1/clients"), keep_bodies=True)
    ids["client_ids"] = [body["id"] for status, body in created.bodies if status == 201]
    return ids


def _post(path: str) -> Any:
    async def send(client: Any, body: dict[str, Any]) -> Any:
        return await client.post(path, json=body)

    return send


def starts_to_cancel(count: int, therapists: int) -> list[tuple[datetime, int]]:
    """``count`` (start, therapist index) pairs on the hour over the next days, 08:00-19:00."""
    tz = ZoneInfo(TIMEZONE)
    first = datetime.now(tz).date() + timedelta(days=1)
    pairs: list[tuple[datetime, int]] = []
    day = 0
    while len(pairs) < count:
        for hour in range(8, 20):
            for t in range(therapists):
                moment = datetime.combine(first + timedelta(days=day), datetime.min.time(), tz)
                pairs.append((moment.replace(hour=hour).astimezone(UTC), t))
        day += 1
    random.Random(1).shuffle(pairs)
    return pairs[:count]


def entry_bodies(ids: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = random.Random(args.seed)
    today = datetime.now(ZoneInfo(TIMEZONE)).date()
    bodies = []
    for client_id in ids["client_ids"][: args.entries]:
        earliest = today + timedelta(days=rng.randint(0, 4))
        body: dict[str, Any] = {
            "client_id": client_id,
            "service_id": ids["service_id"],
            "location_id": ids["location_id"],
            "earliest": earliest.isoformat(),
            "latest": (earliest + timedelta(days=rng.randint(3, 14))).isoformat(),
        }
        if rng.random() < 1 / 3:
            body["times_of_day"] = rng.sample(TIMES, rng.randint(1, 2))
        if rng.random() < 0.1:
            body["therapist_id"] = rng.choice(ids["therapist_ids"])
        bodies.append(body)
    return bodies


class OfferTap:
    """Every ``booking.waitlist.offered`` with the moment it arrived (perf_counter)."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.offers: list[tuple[float, dict[str, Any]]] = []

    async def __aenter__(self) -> OfferTap:
        self.nc = await nats.connect(self.nats_url)
        self.sub = await self.nc.jetstream().subscribe(
            "booking.waitlist.offered",
            cb=self._on,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
            manual_ack=False,
        )
        return self

    async def _on(self, msg: Any) -> None:
        self.offers.append((time.perf_counter(), json.loads(msg.data)["data"]))

    async def __aexit__(self, *exc: object) -> None:
        await self.sub.unsubscribe()
        await self.nc.close()


async def scenario(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    nats_url = stack.start_nats()
    # Production refuses the documented development key: give it one of its own.
    service = await start_booking(
        stack, args.database_url, BOOKING_SECRET_KEY="bench-" + stack.admin_key
    )
    reminders_port = free_port()
    sandbox = await start_sandbox(stack, f"http://127.0.0.1:{reminders_port}/twilio/inbound")
    sandbox_url = sandbox.url
    reminders = await start_reminders(
        stack,
        "reminders",
        sandbox_url,
        f"sqlite+aiosqlite:///{stack.tmp / 'reminders.db'}",
        port=reminders_port,
        QUIET_HOURS_START="00:00",
        QUIET_HOURS_END="24:00",
        SMS_RATE_PER_SECOND="0",
    )
    base, key = service.url, stack.admin_key
    t0 = time.perf_counter()
    ids = await set_up(base, key, args)
    cancellers = ids["client_ids"][args.entries :]
    sessions: list[str] = []
    starts: dict[str, tuple[str, str]] = {}
    async with api_client(base, key) as api:
        for (start, t), client_id in zip(
            starts_to_cancel(args.cancels, args.therapists), cancellers, strict=False
        ):
            body = {
                "client_id": client_id,
                "service_id": ids["service_id"],
                "location_id": ids["location_id"],
                "start": start.isoformat(),
                "therapist_id": ids["therapist_ids"][t],
            }
            response = await api.post("/v1/sessions", json=body)
            if response.status_code == 201:
                sessions.append(response.json()["id"])
                starts[response.json()["id"]] = (start.isoformat(), ids["therapist_ids"][t])
    joined = await drive_with(base, key, 8, entry_bodies(ids, args), _post("/v1/waitlist"))
    log(
        f"set up {len(ids['client_ids'])} clients, {len(sessions)} sessions and "
        f"{joined.count(201)} waitlist entries in {time.perf_counter() - t0:.1f}s"
    )

    sent_at: dict[str, float] = {}

    async def cancel(client: Any, session_id: str) -> Any:
        sent_at[session_id] = time.perf_counter()
        return await client.post(f"/v1/sessions/{session_id}/cancel", json={"reason": "bench"})

    sent_wall: dict[str, float] = {}

    async def cancel_timed(client: Any, session_id: str) -> Any:
        sent_wall[session_id] = time.time()  # the sandbox stamps its receipts in wall time
        return await cancel(client, session_id)

    async with OfferTap(nats_url) as tap:
        rate = len(sessions) / args.seconds
        log(f"cancelling {len(sessions)} sessions over {args.seconds:.0f}s")
        cancels = await open_loop(base, key, sessions, cancel_timed, rate)
        await asyncio.sleep(3)  # offers still on their way (the relay is woken at commit)
        offers = list(tap.offers)
        texted = await offer_texts(sandbox_url, offers)
        claims = await claim_by_text(sandbox_url, base, key, ids, offers)
    service.child.stop()
    reminders.child.stop()

    by_slot: dict[tuple[str, str], list[tuple[float, dict[str, Any]]]] = defaultdict(list)
    for arrived, offer in offers:
        slot = offer["slot"]
        start = datetime.fromisoformat(slot["start"]).astimezone(UTC).isoformat()
        by_slot[(start, slot["therapist_id"])].append((arrived, offer))
    latencies = []
    text_latencies = []
    for session_id, moment in sent_at.items():
        got = by_slot.get(starts[session_id])
        if got:
            latencies.append((min(a for a, _ in got) - moment) * 1000)
            arrivals = [
                texted[o["client"]["phone"]] for _, o in got if o["client"]["phone"] in texted
            ]
            if arrivals:
                text_latencies.append((min(arrivals) - sent_wall[session_id]) * 1000)
    per_client = Counter(
        (slot, o["client"]["id"]) for slot, items in by_slot.items() for _, o in items
    )
    return {
        "entries": joined.count(201),
        "cancels": cancels.count(200),
        "cancel_seconds": round(cancels.wall_s, 1),
        "cancel_http": latency_summary(cancels.latencies_ms),
        "slots_offered": len(by_slot),
        "offers": len(offers),
        "cancel_to_offer": latency_summary(latencies),
        "cancel_to_offer_text": latency_summary(text_latencies),
        "offer_texts": len(texted),
        "slots_texted": len(text_latencies),
        "claims": claims,
        "checks": {
            "slots_booked_twice": claims["slots_booked_twice"],
            "clients_offered_one_slot_twice": sum(1 for n in per_client.values() if n > 1),
            "slots_with_more_than_3_offers": sum(1 for v in by_slot.values() if len(v) > 3),
            "service_log_warnings": service_log_findings(service.child.log_text()),
            "reminders_log_warnings": service_log_findings(reminders.child.log_text()),
        },
        "database": "PostgreSQL" if args.database_url else "SQLite",
        "date": date.today().isoformat(),
    }


async def offer_texts(
    sandbox_url: str, offers: list[tuple[float, dict[str, Any]]]
) -> dict[str, float]:
    """Phone -> wall time the sandbox received its first text, for every offered client
    (waits until every offered client's text is in, or 30 s)."""
    phones = {o["client"]["phone"] for _, o in offers}
    found: dict[str, float] = {}
    deadline = time.monotonic() + 30
    async with api_client(sandbox_url, None) as sandbox:
        while time.monotonic() < deadline:
            state = (await sandbox.get("/_sandbox/messages")).json()
            found = {}
            for m in state["messages"]:
                if m["direction"] == "outbound-api" and m["to"] in phones:
                    found[m["to"]] = min(found.get(m["to"], m["received_at"]), m["received_at"])
            if len(found) >= len(phones):
                break
            await asyncio.sleep(1)
    return found


async def claim_by_text(
    sandbox_url: str,
    base: str,
    key: str,
    ids: dict[str, Any],
    offers: list[tuple[float, dict[str, Any]]],
) -> dict[str, int]:
    """The first two clients offered each slot reply BOOK at once; then count the sessions
    booked per slot (never more than one) and the "taken" texts."""
    by_slot: dict[tuple[str, str], list[str]] = defaultdict(list)
    for _, offer in offers:
        slot = offer["slot"]
        by_slot[(slot["start"], slot["therapist_id"])].append(offer["client"]["phone"])
    pairs = [phones[:2] for phones in by_slot.values()]
    async with httpx.AsyncClient(base_url=sandbox_url, timeout=60) as phones:  # many at once
        await asyncio.gather(
            *(
                phones.post(f"/_sandbox/phones/{phone}/reply", json={"body": "BOOK"})
                for pair in pairs
                for phone in pair
            )
        )
    claimants = {phone for pair in pairs for phone in pair}
    await settle(sandbox_url, claimants)  # claims through reminders and booking, then texts
    booked: Counter[tuple[str, str]] = Counter()
    async with api_client(base, key) as api:
        params: dict[str, Any] = {"location_id": ids["location_id"], "limit": 200}
        while True:
            page = await api.get("/v1/sessions", params=params)
            for row in page.json():
                if row["status"] in ("booked", "confirmed"):
                    moment = datetime.fromisoformat(row["start"]).astimezone(UTC).isoformat()
                    booked[(moment, row["therapist_id"])] += 1
            cursor = page.headers.get("X-Next-Cursor")
            if not cursor:
                break
            params = {**params, "cursor": cursor}
    slots = {
        (datetime.fromisoformat(start).astimezone(UTC).isoformat(), therapist)
        for start, therapist in by_slot
    }
    async with api_client(sandbox_url, None) as sandbox:
        state = (await sandbox.get("/_sandbox/messages")).json()
    taken = [
        m
        for m in state["messages"]
        if m["direction"] == "outbound-api" and m["to"] in claimants and "no longer" in m["body"]
    ]
    return {
        "slots_claimed_twice_at_once": len([p for p in pairs if len(p) == 2]),
        "slots_filled": sum(1 for slot in slots if booked[slot] == 1),
        "slots_booked_twice": sum(1 for slot in slots if booked[slot] > 1),
        "taken_texts": len(taken),
    }


async def settle(sandbox_url: str, phones: set[str], quiet: float = 10.0) -> None:
    """Wait until no new text to ``phones`` arrived for ``quiet`` seconds (at most 120 s)."""
    last, since = -1, time.monotonic()
    deadline = since + 120
    async with api_client(sandbox_url, None) as sandbox:
        while time.monotonic() < deadline:
            state = (await sandbox.get("/_sandbox/messages")).json()
            count = sum(1 for m in state["messages"] if m["to"] in phones)
            if count != last:
                last, since = count, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            await asyncio.sleep(0.5)


def report(fig: dict[str, Any]) -> str:
    c, lat, http = fig["checks"], fig["cancel_to_offer"], fig["cancel_http"]
    text, claims = fig["cancel_to_offer_text"], fig["claims"]
    rows = [
        [
            "cancel request → first offered event on NATS",
            fig["slots_offered"],
            lat["p50_ms"],
            lat["p99_ms"],
            lat["max_ms"],
        ],
        [
            "cancel request → first offer text at the sandbox",
            fig["slots_texted"],
            text["p50_ms"],
            text["p99_ms"],
            text["max_ms"],
        ],
        ["POST /cancel (HTTP)", fig["cancels"], http["p50_ms"], http["p99_ms"], http["max_ms"]],
    ]
    return "\n".join(
        [
            "",
            f"Waitlist benchmark ({fig['database']}): {fig['entries']} entries, "
            f"{fig['cancels']} cancels in {fig['cancel_seconds']}s, "
            f"{fig['offers']} offers over {fig['slots_offered']} slots",
            table(rows, ["measure", "n", "p50 ms", "p99 ms", "max ms"]),
            f"checks: {c['clients_offered_one_slot_twice']} clients offered one slot twice, "
            f"{c['slots_with_more_than_3_offers']} slots offered more than 3 times, "
            f"{c['slots_booked_twice']} slots booked twice",
            f"BOOK: {claims['slots_claimed_twice_at_once']} slots claimed by two clients at "
            f"once, {claims['slots_filled']} slots filled, {claims['taken_texts']} 'taken' texts",
            "",
        ]
    )


def cli(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return main(
        scenario,
        args,
        report=report,
        failed=lambda f: bool(
            f["checks"]["clients_offered_one_slot_twice"]
            or f["checks"]["slots_with_more_than_3_offers"]
            or f["checks"]["slots_booked_twice"]
        ),
    )


if __name__ == "__main__":
    sys.exit(cli())
