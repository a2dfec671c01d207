"""Idle floor: what booking, reminders and referrals cost when nothing happens, and what
they print per message.

What it does, all on 127.0.0.1 with free ports and a temporary directory:

1. starts ``nats-server`` (JetStream), the Twilio sandbox (reminders' sending target) and
   ``python -m services.booking``, ``… reminders``, ``… referrals`` as child processes,
   each on its own SQLite file, at the default log level (no ``LOG_LEVEL``), and waits
   until each is ready (reminders: until it holds the scheduler lease);
2. lets them settle for ``--settle`` seconds (first pulls, first periodic jobs);
3. measures for ``--seconds`` (60) each service's CPU (``/proc/<pid>/stat`` utime +
   stime, every thread), its RSS at the end (``/proc/<pid>/status`` VmRSS, the peak
   VmHWM beside it) and the log lines and tracebacks it wrote in the window;
4. publishes ``--events`` (200) events every service consumes (half
   ``booking.session.booked``: booking's CalDAV consumer, reminders, referrals; half
   ``reminders.consent.changed``… see :func:`events_for`), waits until every durable
   consumer has acked them all, and counts the log lines written meanwhile: a line per
   message at the default level is a finding (floor: 0 per message), and each service's
   RSS after them (work loads what idle never needs: reminders' CLDR data for the texts);
5. prints a table with the floors beside, and one JSON line (stdout, or ``--json FILE``).

Floors (issue 12): no traceback, no log line per message or per poll, under 0.5% CPU and
at most 100 MB RSS per service.

Run from the project root::

    .venv/bin/python bench/idle.py                 # ~100 s
    .venv/bin/python bench/idle.py --seconds 20    # a quicker look
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import nats

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    Child,
    Stack,
    arguments,
    log,
    machine,
    main,
    start_booking,
    start_reminders,
    start_sandbox,
    start_service,
    table,
)
from shared import events  # noqa: E402
from tools.kit.events import client_event, consent_event, publish, session_event  # noqa: E402

CPU_FLOOR_PERCENT = 0.5
RSS_FLOOR_MB = 100.0
SERVICES = ("booking", "reminders", "referrals")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = arguments(__doc__, budget=240.0, strict="exit 1 when a floor is missed")
    p.add_argument("--seconds", type=float, default=60.0, help="idle window (default 60)")
    p.add_argument("--settle", type=float, default=10.0, help="settling before it (default 10)")
    p.add_argument("--events", type=int, default=200, help="events published (default 200)")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every service, e.g. OUTBOX_POLL_SECONDS=5 (repeatable)",
    )
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.settle < 0 or args.events < 0:
        p.error("--seconds must be > 0, --settle and --events >= 0")
    if any("=" not in item for item in args.env):
        p.error("--env takes NAME=VALUE")
    return args


# ---------------------------------------------------------------------------------------
# What /proc says about a child


def _pid(child: Child) -> int:
    assert child.process is not None
    return child.process.pid


def status_kb(child: Child, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``); 0 if gone."""
    try:
        for line in Path(f"/proc/{_pid(child)}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class LogWindow:
    """The lines a child wrote to its log between :meth:`open` and :meth:`lines`."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.offset = 0

    def open(self) -> None:
        self.offset = self.child.log_path.stat().st_size

    def lines(self) -> list[str]:
        with self.child.log_path.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace").splitlines()


def tracebacks(lines: list[str]) -> int:
    return sum(1 for line in lines if line.startswith("Traceback"))


# ---------------------------------------------------------------------------------------
# The scenario


def events_for(n: int) -> list[events.CloudEvent[Any]]:
    """Events every service consumes: sessions booked (booking's CalDAV consumer,
    reminders, referrals), clients created (reminders, referrals), consent changes
    (booking). About a third each."""
    out: list[events.CloudEvent[Any]] = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append(session_event())
        elif kind == 1:
            out.append(client_event(first_name="Bench"))
        else:
            out.append(consent_event(f"+1646{i:07d}", sms_consent=True, source="START"))
    return out


async def wait_consumed(nats_url: str, timeout: float = 120.0) -> float:
    """Seconds until every durable consumer of every stream has nothing pending or unacked."""
    started = time.perf_counter()
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        while True:
            busy = 0
            for stream in events.STREAM_SUBJECTS:
                try:
                    consumers = await js.consumers_info(stream)
                except Exception:
                    continue
                busy += sum((c.num_pending or 0) + (c.num_ack_pending or 0) for c in consumers)
            if busy == 0:
                return time.perf_counter() - started
            if time.perf_counter() - started > timeout:
                raise SystemExit(f"{busy} messages still unconsumed after {timeout:.0f}s")
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def scenario(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    nats_url = stack.start_nats()
    sandbox = await start_sandbox(stack)
    var = stack.tmp / "var"
    extra = dict(item.split("=", 1) for item in args.env)
    children = {
        "booking": (await start_booking(stack, **extra)).child,
        "reminders": (
            await start_reminders(
                stack, "reminders", sandbox.url, f"sqlite+aiosqlite:///{var}/reminders.db", **extra
            )
        ).child,
        # As start_referrals does (development mode, 127.0.0.1 webhooks), plus ``extra``.
        "referrals": (
            await start_service(
                stack,
                "referrals",
                "REFERRALS_PORT",
                **{"APP_ENV": "development", "OUTBOUND_ALLOWED_HOSTS": "127.0.0.1:*", **extra},
            )
        ).child,
    }
    log(f"settling {args.settle:g}s")
    await asyncio.sleep(args.settle)

    windows = {name: LogWindow(child) for name, child in children.items()}
    for window in windows.values():
        window.open()
    cpu_before = {name: child.cpu_seconds() or 0.0 for name, child in children.items()}
    started = time.perf_counter()
    log(f"measuring idle for {args.seconds:g}s")
    await asyncio.sleep(args.seconds)
    wall = time.perf_counter() - started
    idle: dict[str, Any] = {}
    for name, child in children.items():
        lines = windows[name].lines()
        cpu = (child.cpu_seconds() or 0.0) - cpu_before[name]
        idle[name] = {
            "cpu_percent": round(100 * cpu / wall, 3),
            "rss_mb": round(status_kb(child, "VmRSS") / 1024, 1),
            "peak_rss_mb": round(status_kb(child, "VmHWM") / 1024, 1),
            "log_lines": len(lines),
            "tracebacks": tracebacks(lines),
            "sample": lines[:3],
            "running": child.running,
        }

    busy: dict[str, Any] = {}
    if args.events:
        for window in windows.values():
            window.open()
        cpu_before = {name: child.cpu_seconds() or 0.0 for name, child in children.items()}
        to_send = events_for(args.events)
        log(f"publishing {len(to_send)} events")
        await publish(nats_url, *to_send, in_flight=20)
        drained = await wait_consumed(nats_url)
        await asyncio.sleep(1.0)  # the last lines of the last messages
        for name, child in children.items():
            lines = windows[name].lines()
            busy[name] = {
                "log_lines": len(lines),
                "lines_per_message": round(len(lines) / len(to_send), 3),
                "tracebacks": tracebacks(lines),
                "cpu_ms_per_event": round(
                    1000 * ((child.cpu_seconds() or 0.0) - cpu_before[name]) / len(to_send), 2
                ),
                # after work has loaded what idle never needs (reminders: the texts' CLDR data)
                "rss_after_mb": round(status_kb(child, "VmRSS") / 1024, 1),
                "sample": lines[:3],
            }
        busy["drained_s"] = round(drained, 2)

    return {
        "benchmark": "idle",
        "seconds": round(wall, 1),
        "events": args.events,
        "floors": {"cpu_percent": CPU_FLOOR_PERCENT, "rss_mb": RSS_FLOOR_MB, "lines": 0},
        "idle": idle,
        "messages": busy,
        "env": extra,
        "machine": machine(),
    }


def misses(figures: dict[str, Any]) -> list[str]:
    out = []
    for name in SERVICES:
        i = figures["idle"][name]
        if i["cpu_percent"] >= CPU_FLOOR_PERCENT:
            out.append(f"{name}: {i['cpu_percent']}% CPU idle")
        if i["rss_mb"] > RSS_FLOOR_MB:
            out.append(f"{name}: {i['rss_mb']} MB RSS")
        if i["tracebacks"] or i["log_lines"]:
            out.append(f"{name}: {i['log_lines']} log lines idle ({i['tracebacks']} tracebacks)")
        m = figures["messages"].get(name)
        if m and (m["log_lines"] or m["tracebacks"]):
            out.append(f"{name}: {m['log_lines']} log lines for {figures['events']} events")
    return out


def report(figures: dict[str, Any]) -> str:
    rows = []
    for name in SERVICES:
        i = figures["idle"][name]
        m = figures["messages"].get(name, {})
        rows.append(
            [
                name,
                i["cpu_percent"],
                i["rss_mb"],
                i["peak_rss_mb"],
                i["log_lines"],
                i["tracebacks"],
                m.get("log_lines", "-"),
                m.get("cpu_ms_per_event", "-"),
                m.get("rss_after_mb", "-"),
            ]
        )
    rows.append(
        [
            "floor",
            f"< {CPU_FLOOR_PERCENT}",
            f"<= {RSS_FLOOR_MB:.0f}",
            "",
            0,
            0,
            0,
            "",
            "",
        ]
    )
    header = [
        f"service ({figures['seconds']:g} s idle)",
        "CPU %",
        "RSS MB",
        "peak MB",
        "lines idle",
        "tracebacks",
        f"lines/{figures['events']} events",
        "CPU ms/event",
        "RSS MB after",
    ]
    found = misses(figures)
    tail = ["", "floors missed: " + ("; ".join(found) if found else "none")]
    for name in SERVICES:
        sample = figures["idle"][name]["sample"] or figures["messages"].get(name, {}).get(
            "sample", []
        )
        if sample:
            tail.append(f"{name} log: {sample[0][:160]}")
    return "\n".join([table(rows, header), *tail])


def cli(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return main(
        scenario,
        args,
        report=report,
        failed=lambda figures: bool(getattr(args, "strict", False) and misses(figures)),
    )


if __name__ == "__main__":
    sys.exit(cli())
