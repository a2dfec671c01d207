"""The client's page: p50/p99 of opening it (``GET /m/{token}``) and of a reschedule through
it (``GET /m/{token}/reschedule`` for the times, then the ``POST``), one client at a time.

Starts ``nats-server`` and ``python -m services.booking`` (SQLite, production settings
with a real secret key) as child processes on free ports, books ``--sessions`` sessions
over the API, then times each step per session. Prints a table and one JSON line.

    .venv/bin/python bench/manage_page.py            # ~30 s
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    Stack,
    api_client,
    arguments,
    latency_summary,
    log,
    machine,
    main,
    start_booking,
    table,
)
from tools.kit import ClinicBuilder, Hours, call  # noqa: E402

NY = ZoneInfo("America/New_York")
FORM_TOKEN = re.compile(r'name="form_token" value="([^"]+)"')
START = re.compile(r'name="start" id="[^"]+" value="([^"]+)"')


async def book_sessions(base: str, key: str, count: int) -> list[str]:
    """``count`` sessions over ten days (four therapists, four rooms); each one's page path."""
    clinic = ClinicBuilder()
    clinic.location(
        "Bench", rooms=4, timezone="America/New_York", address="1 Main St", phone="+12125550100"
    )
    clinic.treatment("Massage", modality="massage", duration_minutes=60, buffer_minutes=15)
    for i in range(4):
        clinic.therapist(
            f"T{i}", modalities=["massage"], hours=[Hours(0, range(7), "08:00", "20:00")]
        )
    for i in range(count):
        clinic.client(f"C{i}", "Bench", phone=f"+1212555{i:04d}", sms_consent=True)
    paths = []
    day = datetime.now(NY).date() + timedelta(days=2)
    async with api_client(base, key) as api:
        made = await clinic.create(api)
        for i in range(count):
            slot_day = day + timedelta(days=i % 10)
            start = datetime(
                slot_day.year, slot_day.month, slot_day.day, 8 + (i // 10) % 11, tzinfo=NY
            ).astimezone(UTC)
            session = await call(
                api, "POST", "/v1/sessions", expect=201, json=made.session_body(start, client=i)
            )
            paths.append("/" + session["manage_url"].split("://", 1)[1].split("/", 1)[1])
    return paths


async def scenario(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    stack.start_nats()
    # Production settings with a real secret key: the development one issues no links.
    booking = await start_booking(
        stack, args.database_url, BOOKING_SECRET_KEY=secrets.token_urlsafe(32)
    )
    base = booking.url
    paths = await book_sessions(base, stack.admin_key, args.sessions)
    log(f"booked {len(paths)} sessions; timing the page")
    opened, listed, moved = [], [], []
    async with api_client(base) as browser:
        for path in paths[:3]:  # warm-up
            await browser.get(path)
        for i, path in enumerate(paths):
            t0 = time.perf_counter()
            page = await browser.get(path)
            opened.append((time.perf_counter() - t0) * 1000)
            assert page.status_code == 200, page.text[:200]
            t0 = time.perf_counter()
            times = await browser.get(f"{path}/reschedule")
            listed.append((time.perf_counter() - t0) * 1000)
            starts = START.findall(times.text)
            token = FORM_TOKEN.search(times.text)
            assert starts and token, "no times offered"
            t0 = time.perf_counter()
            done = await browser.post(
                f"{path}/reschedule",
                data={"form_token": token.group(1), "start": starts[(i * 7) % len(starts)]},
            )
            moved.append((time.perf_counter() - t0) * 1000)
            assert done.status_code in (303, 409), done.text[:300]
    figures = {
        "benchmark": "manage_page",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "sessions": len(paths),
        "open_ms": latency_summary(opened),
        "reschedule_times_ms": latency_summary(listed),
        "reschedule_post_ms": latency_summary(moved),
        "reschedule_total_ms": latency_summary([a + b for a, b in zip(listed, moved, strict=True)]),
        "machine": machine(),
    }
    return figures


def report(figures: dict[str, Any]) -> str:
    rows = [
        (name, figures[key]["p50_ms"], figures[key]["p99_ms"])
        for name, key in (
            ("GET /m/{token}", "open_ms"),
            ("GET /m/{token}/reschedule", "reschedule_times_ms"),
            ("POST /m/{token}/reschedule", "reschedule_post_ms"),
            ("reschedule, both", "reschedule_total_ms"),
        )
    ]
    return table(rows, ["step", "p50 ms", "p99 ms"]) + "\n"


def cli(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=100)
    return main(scenario, parser.parse_args(argv), report=report)


if __name__ == "__main__":
    sys.exit(cli())
