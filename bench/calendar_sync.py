"""Calendar sync: sessions per second written into CalDAV calendars (Radicale), and the delay
from a session's event to the event being in the calendar.

What it does, all on 127.0.0.1 with free ports and a temporary directory:

1. starts ``nats-server``, Radicale (``python -m radicale``, filesystem storage, no auth) and
   ``python -m services.booking`` (uvicorn, SQLite by default) as child processes;
2. creates a location open 08:00-20:00 every day, one room and one CalDAV calendar per
   therapist, a treatment and clients through the API;
3. backlog: books ``--backlog`` sessions while no calendar is linked, then links every
   therapist's calendar at once (``POST /v1/calendar-links``, push) and measures how long
   until every session is a file in Radicale's storage: sessions per second pushed;
4. live: books ``--sessions`` more with ``--concurrency`` clients, and for each one takes
   the time between its ``booking.session.booked`` event (the CloudEvent ``time``, set in
   the booking's transaction) and the moment its ``.ics`` file appears in Radicale's
   storage (the directory is watched every 2 ms, so nothing extra asks Radicale);
5. checks every session is in its therapist's calendar exactly once with SEQUENCE 0, and
   that no link reports an error; prints a table and one JSON line.

Run from the project root::

    .venv/bin/python bench/calendar_sync.py              # 300 backlog + 300 live, 4 clients
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import nats

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    Stack,
    api_client,
    arguments,
    booking_db_path,
    drive_with,
    latency_summary,
    log,
    machine,
    main,
    service_log_findings,
    start_booking,
    start_radicale,
    table,
)
from tools.kit import ClinicBuilder, Hours, call  # noqa: E402

TIMEZONE = "America/New_York"
MODALITY = "medical_massage"
DURATION_MIN, BUFFER_MIN = 50, 10
OPEN_HOUR, CLOSE_HOUR = 8, 20
UID_SUFFIX = "@booking.clinic-backbone"
RADICALE_PASSWORD = "bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = arguments(__doc__, database="BOOKING_DATABASE_URL (default SQLite)")
    p.add_argument("--backlog", type=int, default=300, help="sessions booked before linking")
    p.add_argument("--sessions", type=int, default=300, help="sessions booked while linked")
    p.add_argument("--concurrency", type=int, default=4, help="booking clients")
    p.add_argument(
        "--rate",
        type=float,
        default=10.0,
        help="live bookings per second, open loop (default 10; 0: as fast as the clients go)",
    )
    p.add_argument("--therapists", type=int, default=4, help="therapists, one calendar each")
    p.add_argument("--clients", type=int, default=20, help="clients booked for")
    args = p.parse_args(argv)
    if min(args.backlog, args.sessions, args.concurrency, args.therapists, args.clients) < 1:
        p.error("every count must be >= 1")
    per_day = args.therapists * (CLOSE_HOUR - OPEN_HOUR)
    if (args.backlog + args.sessions) / per_day > 80:
        p.error("more sessions than fit in 80 days: add --therapists")
    return args


# ---------------------------------------------------------------------------------------
# Calendars and the clinic


def make_calendar(radicale: str, user: str) -> str:
    from caldav.davclient import DAVClient

    client = DAVClient(url=radicale + "/", username=user, password=RADICALE_PASSWORD)
    return str(client.principal().make_calendar(name="work", cal_id="work").url)


async def set_up(base: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    clinic = ClinicBuilder()
    clinic.location(
        "Bench Clinic",
        rooms=[f"R{n}" for n in range(args.therapists)],
        timezone=TIMEZONE,
        address="1 Benchmark Plaza",
        phone="+12125550100",
    )
    clinic.treatment(
        "Medical massage 50",
        modality=MODALITY,
        duration_minutes=DURATION_MIN,
        buffer_minutes=BUFFER_MIN,
    )
    hours = [Hours(0, range(7), f"{OPEN_HOUR:02d}:00", f"{CLOSE_HOUR:02d}:00")]
    for n in range(args.therapists):
        clinic.therapist(f"T{n}", modalities=[MODALITY], hours=hours)
    for n in range(args.clients):
        # sms_consent as booking's API defaults it: no texts for these clients
        clinic.client(f"Client{n}", "Bench", phone=f"+1212555{1000 + n:04d}", sms_consent=False)
    async with api_client(base, key) as api:
        made = await clinic.create(api)
    return {
        "location": made.location["id"],
        "service": made.treatment["id"],
        "therapists": made.ids("therapists"),
        "clients": made.ids("clients"),
    }


def bodies(ids: dict[str, Any], count: int, first_day: int) -> list[dict[str, Any]]:
    """``count`` bookings on the hour from ``first_day`` days ahead, round robin over the
    therapists (so every calendar gets its share, as in a clinic).

    No two ever clash (as many rooms as therapists, 50 + 10 minutes per hour), and the
    requests in flight together are for different hours: on PostgreSQL two bookings at
    one start race for the same room and one gets a 409, which is not measured here.
    Therapist ``t`` walks the same hours shifted by ``t * shift``.
    """
    tz = ZoneInfo(TIMEZONE)
    today = datetime.now(tz).date()
    therapists = ids["therapists"]
    per_therapist = -(-count // len(therapists))
    hours: list[datetime] = []
    day = first_day
    while len(hours) < per_therapist:
        date = today + timedelta(days=day)
        hours.extend(
            datetime(date.year, date.month, date.day, hour, tzinfo=tz).astimezone(UTC)
            for hour in range(OPEN_HOUR, CLOSE_HOUR)
        )
        day += 1
    hours = hours[:per_therapist]
    shift = max(2, per_therapist // len(therapists))
    out = [
        {
            "client_id": ids["clients"][(k * len(therapists) + t) % len(ids["clients"])],
            "service_id": ids["service"],
            "location_id": ids["location"],
            "therapist_id": therapist,
            "start": hours[(k + t * shift) % per_therapist].isoformat(),
        }
        for k in range(per_therapist)
        for t, therapist in enumerate(therapists)
    ]
    return out[:count]


async def book(
    base: str, key: str, items: list[dict[str, Any]], concurrency: int, rate: float = 0.0
) -> list[str]:
    """Book ``items`` with ``concurrency`` clients: as fast as they go, or (``rate`` > 0)
    open loop, booking number ``n`` sent at ``n / rate`` seconds (if a client is free)."""
    started = time.monotonic()

    async def send(client: Any, item: tuple[int, dict[str, Any]]) -> Any:
        n, body = item
        if rate > 0:
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
        return await client.post("/v1/sessions", json=body)

    items_n = list(enumerate(items))
    result = await drive_with(base, key, concurrency, items_n, send, keep_bodies=True)
    ids = [body["id"] for status, body in result.bodies if status == 201]
    if len(ids) != len(items):
        failures = [b for s, b in result.bodies if s != 201][:3]
        raise RuntimeError(f"{len(items) - len(ids)} bookings failed, e.g. {failures}")
    return ids


def direct_put_rate(radicale: str, calendars: int, events: int) -> float:
    """Radicale alone: ``events`` PUTs through the same client code, ``calendars`` fresh
    calendars written in parallel threads (what the backlog phase asks of it)."""
    from concurrent.futures import ThreadPoolExecutor

    import icalendar

    from services.booking.calendar.caldav import CalDavCalendar, Credentials

    def resource(n: int) -> bytes:
        event = icalendar.Event()
        event.add("uid", f"baseline-{n}@bench")
        event.add("dtstamp", datetime.now(UTC))
        event.add("sequence", 0)
        event.add("dtstart", datetime(2030, 1, 1, tzinfo=UTC) + timedelta(hours=n))
        event.add("dtend", datetime(2030, 1, 1, 1, tzinfo=UTC) + timedelta(hours=n))
        event.add("summary", "Medical massage 50: Client B.")
        cal = icalendar.Calendar()
        cal.add("prodid", "-//bench//EN")
        cal.add("version", "2.0")
        cal.add_component(event)
        return bytes(cal.to_ical())

    targets = []
    for n in range(calendars):
        url = make_calendar(radicale, f"baseline{n}")
        targets.append(CalDavCalendar(url, Credentials(f"baseline{n}", RADICALE_PASSWORD), 30))

    def write(index: int) -> None:
        for n in range(index, events, calendars):
            targets[index].put(resource(n))

    started = time.monotonic()
    with ThreadPoolExecutor(calendars) as pool:
        list(pool.map(write, range(calendars)))
    return events / (time.monotonic() - started)


# ---------------------------------------------------------------------------------------
# Watching Radicale's storage and the events


class StorageWatch:
    """First time each of our event files shows up in the calendar directories."""

    def __init__(self, directories: list[Path]) -> None:
        self.directories = directories
        self.seen: dict[str, float] = {}
        self.files: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def scan(self) -> None:
        now = time.time()
        counts: dict[str, int] = {}
        for directory in self.directories:
            if not directory.exists():
                continue
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.endswith(UID_SUFFIX + ".ics"):
                        session_id = entry.name.removesuffix(UID_SUFFIX + ".ics")
                        counts[session_id] = counts.get(session_id, 0) + 1
                        self.seen.setdefault(session_id, now)
        self.files = counts

    async def _run(self) -> None:
        while True:
            self.scan()
            await asyncio.sleep(0.002)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_for(self, session_ids: list[str], timeout: float) -> float:
        """Seconds until every one of ``session_ids`` has a file."""
        started = time.monotonic()
        wanted = set(session_ids)
        while not wanted <= self.seen.keys():
            if time.monotonic() - started > timeout:
                missing = len(wanted - self.seen.keys())
                raise RuntimeError(f"{missing} sessions not in the calendars after {timeout:.0f}s")
            await asyncio.sleep(0.005)
        return time.monotonic() - started


class EventTimes:
    """The CloudEvent ``time`` of each ``booking.session.booked`` (a new-messages tap)."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.times: dict[str, float] = {}

    async def __aenter__(self) -> EventTimes:
        self.nc = await nats.connect(self.nats_url)
        js = self.nc.jetstream()
        self.sub = await js.subscribe(
            "booking.session.booked",
            cb=self._on_message,
            config=nats.js.api.ConsumerConfig(deliver_policy=nats.js.api.DeliverPolicy.NEW),
            manual_ack=False,
        )
        return self

    async def _on_message(self, msg: Any) -> None:
        event = json.loads(msg.data)
        stamp = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
        self.times[event["data"]["session_id"]] = stamp.timestamp()

    async def __aexit__(self, *exc: object) -> None:
        await self.sub.unsubscribe()
        await self.nc.close()


# ---------------------------------------------------------------------------------------
# The run


def requested_times(database_url: str, session_ids: list[str]) -> dict[str, float]:
    """When the sync's consumer asked for each session's push (``calendar_pushes``)."""
    from sqlalchemy import DateTime, bindparam, create_engine, text

    from shared.db import sync_url

    engine = create_engine(sync_url(database_url))
    query = (
        text("SELECT session_id, requested_at FROM calendar_pushes WHERE session_id IN :ids")
        .bindparams(bindparam("ids", expanding=True))
        .columns(requested_at=DateTime())
    )
    try:
        with engine.connect() as conn:
            rows = conn.execute(query, {"ids": session_ids}).all()
    finally:
        engine.dispose()
    # SQLite gives the stored UTC time back without its zone.
    return {sid: (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() for sid, at in rows}


async def scenario(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    load_start = round(os.getloadavg()[0], 2)
    nats_url = stack.start_nats()
    radicale_service, storage = await start_radicale(stack)
    radicale, radicale_base = radicale_service.child, radicale_service.url
    # Production settings refuse the documented dev key for calendar passwords; Radicale
    # runs on 127.0.0.1, which the outbound policy refuses unless listed.
    service = await start_booking(
        stack,
        args.database_url,
        BOOKING_SECRET_KEY=secrets.token_urlsafe(32),
        OUTBOUND_ALLOWED_HOSTS="127.0.0.1:*",
    )
    booking, base, key = service.child, service.url, stack.admin_key
    ids = await set_up(base, key, args)
    users = [f"t{n}" for n in range(args.therapists)]
    calendars = [await asyncio.to_thread(make_calendar, radicale_base, u) for u in users]
    watch = StorageWatch([storage / "collection-root" / u / "work" for u in users])
    watch.start()

    # Backlog: sessions exist, then every calendar is linked at once.
    backlog_ids = await book(base, key, bodies(ids, args.backlog, 2), args.concurrency)
    log(f"booked {len(backlog_ids)} sessions with no calendar linked; linking {len(users)}")
    linked_at = time.monotonic()
    links = []
    async with api_client(base, key) as api:
        for therapist, user, url in zip(ids["therapists"], users, calendars, strict=True):
            link = await call(
                api,
                "POST",
                "/v1/calendar-links",
                expect=201,
                json={
                    "owner_type": "therapist",
                    "owner_id": therapist,
                    "direction": "push",
                    "kind": "caldav",
                    "url": url,
                    "username": user,
                    "password": RADICALE_PASSWORD,
                },
            )
            links.append(link["id"])
    await watch.wait_for(backlog_ids, timeout=args.budget / 2)
    backlog_s = time.monotonic() - linked_at
    log(f"backlog of {len(backlog_ids)} in the calendars after {backlog_s:.2f}s")

    # Live: the delay of each booking from its event to its file.
    per_day = args.therapists * (CLOSE_HOUR - OPEN_HOUR)
    first_live_day = 2 + -(-args.backlog // per_day) + 1
    live = bodies(ids, args.sessions, first_live_day)
    async with EventTimes(nats_url) as tap:
        started = time.monotonic()
        wall_started = time.time()
        live_ids = await book(base, key, live, args.concurrency, args.rate)
        booked_s = time.monotonic() - started
        await watch.wait_for(live_ids, timeout=args.budget / 2)
        live_s = time.monotonic() - started
        deadline = time.monotonic() + 10
        while not set(live_ids) <= tap.times.keys() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # let a doubled write, if any, reach the storage before counting
    watch.scan()
    await watch.stop()
    delays_ms = [
        (watch.seen[s] - tap.times[s]) * 1000
        for s in live_ids
        if s in tap.times and s in watch.seen
    ]
    last_in_calendar = max(watch.seen[s] for s in live_ids)
    # Where the time goes: event -> the sync's consumer saw it (requested_at) -> in calendar.
    requested = await asyncio.to_thread(
        requested_times, args.database_url or f"sqlite:///{booking_db_path(stack)}", live_ids
    )
    consumer_ms = [(requested[s] - tap.times[s]) * 1000 for s in live_ids if s in tap.times]
    push_ms = [(watch.seen[s] - requested[s]) * 1000 for s in live_ids]

    # Checks: each session once, in its therapist's calendar, with SEQUENCE 0; links healthy.
    all_ids = backlog_ids + live_ids
    doubled = sum(1 for s in all_ids if watch.files.get(s, 0) != 1)
    stray = len(set(watch.files) - set(all_ids))
    wrong_sequence = 0
    for user in users:
        directory = storage / "collection-root" / user / "work"
        for path in directory.glob(f"*{UID_SUFFIX}.ics"):
            if "SEQUENCE:0" not in path.read_text():
                wrong_sequence += 1
    async with api_client(base, key) as api:
        shown = await call(api, "GET", "/v1/calendar-links")
    unhealthy = [s for s in shown if s["status"] != "ok" or s["pending_pushes"]]
    booking.stop()
    baseline = await asyncio.to_thread(
        direct_put_rate, radicale_base, args.therapists, args.backlog
    )
    log(f"radicale alone: {baseline:.1f} PUT/s into {args.therapists} fresh calendars")
    radicale.stop()
    findings = service_log_findings(booking.log_text())

    figures = {
        "bench": "calendar_sync",
        "database": "postgresql" if args.database_url else "sqlite",
        "calendars": len(users),
        "backlog_sessions": len(backlog_ids),
        "backlog_seconds": round(backlog_s, 3),
        "backlog_sessions_per_s": round(len(backlog_ids) / backlog_s, 1),
        "radicale_alone_puts_per_s": round(baseline, 1),
        "live_sessions": len(live_ids),
        "live_concurrency": args.concurrency,
        "live_rate_asked_per_s": args.rate,
        "live_booked_per_s": round(len(live_ids) / booked_s, 1),
        "live_in_calendar_per_s": round(len(live_ids) / (last_in_calendar - wall_started), 1),
        "live_all_in_calendar_s": round(live_s, 3),
        "event_to_calendar": latency_summary(delays_ms),
        "event_to_consumer": latency_summary(consumer_ms),
        "consumer_to_calendar": latency_summary(push_ms),
        "delays_measured": len(delays_ms),
        "load_average_1m": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "checks": {
            "sessions_not_exactly_once": doubled,
            "stray_events": stray,
            "wrong_sequence": wrong_sequence,
            "links_not_ok": len(unhealthy),
            "service_log_warnings": findings,
        },
        "machine": machine(),
    }
    if doubled or stray or wrong_sequence or unhealthy:
        log(f"CHECKS FAILED: {figures['checks']}")
    return figures


def report(figures: dict[str, Any]) -> str:
    lat, checks = figures["event_to_calendar"], figures["checks"]
    return table(
        [
            ["backlog: sessions pushed per second", figures["backlog_sessions_per_s"]],
            ["radicale alone: PUTs per second", figures["radicale_alone_puts_per_s"]],
            ["live: sessions booked per second", figures["live_booked_per_s"]],
            ["live: sessions in calendar per second", figures["live_in_calendar_per_s"]],
            ["event -> in calendar p50 (ms)", lat["p50_ms"]],
            ["event -> in calendar p90 (ms)", lat["p90_ms"]],
            ["event -> in calendar p99 (ms)", lat["p99_ms"]],
            ["event -> in calendar max (ms)", lat["max_ms"]],
            ["  event -> sync consumer p50 (ms)", figures["event_to_consumer"]["p50_ms"]],
            ["  sync consumer -> calendar p50 (ms)", figures["consumer_to_calendar"]["p50_ms"]],
            ["sessions not exactly once", checks["sessions_not_exactly_once"]],
            ["links not ok", checks["links_not_ok"]],
        ],
        header=[
            f"calendar sync ({figures['calendars']} calendars, {figures['database']})",
            "value",
        ],
    )


def failed(figures: dict[str, Any]) -> bool:
    checks = figures["checks"]
    return bool(
        checks["sessions_not_exactly_once"] or checks["stray_events"] or checks["links_not_ok"]
    )


def cli(argv: list[str] | None = None) -> int:
    return main(scenario, parse_args(argv), report=report, failed=failed)


if __name__ == "__main__":
    sys.exit(cli())
