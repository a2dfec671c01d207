"""The one harness of the benchmark scripts: each script holds its scenario only.

A script defines its options (:func:`arguments` gives the common ones), an async
``scenario(stack, args)`` that returns its figures, a ``report(figures)`` table and what
counts as failing; :func:`main` runs it within its time budget, prints the table and the
JSON line, and tears every process down (see :mod:`bench.harness.processes`).

- :mod:`~bench.harness.processes`: :class:`Stack` (temporary directory, NATS, children);
- :mod:`~bench.harness.services`: starters for booking, reminders, referrals, the Twilio
  sandbox, Radicale, a bare uvicorn app; a count from a service's database;
- :mod:`~bench.harness.load`: keep-alive clients, closed- and open-loop drivers;
- :mod:`~bench.harness.figures`: percentiles, tables, the JSON line, log findings;
- :mod:`~bench.harness.anchors`: what reminders' figures are set beside (raw JetStream,
  the plain twilio SDK, JetStream message schedules).

The clinic and the events a scenario needs come from the test kit, ``tools.kit``.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.harness.figures import (
    chunked,
    code_fingerprint,
    emit_json,
    latency_summary,
    machine,
    print_out,
    service_log_findings,
    table,
)
from bench.harness.load import (
    LoadResult,
    api_client,
    cpu_per_request,
    drive,
    drive_with,
    open_loop,
    wait_until,
)
from bench.harness.processes import PROJECT_ROOT, Child, ChildFailed, Stack, log, run
from bench.harness.services import (
    Service,
    booking_db_path,
    count,
    reset_sandbox,
    start_booking,
    start_radicale,
    start_referrals,
    start_reminders,
    start_sandbox,
    start_service,
    start_uvicorn,
)
from shared.natsd import free_port

__all__ = [
    "PROJECT_ROOT",
    "Child",
    "ChildFailed",
    "LoadResult",
    "Service",
    "Stack",
    "api_client",
    "arguments",
    "booking_db_path",
    "chunked",
    "code_fingerprint",
    "count",
    "cpu_per_request",
    "drive",
    "drive_with",
    "emit_json",
    "free_port",
    "latency_summary",
    "log",
    "machine",
    "main",
    "open_loop",
    "print_out",
    "reset_sandbox",
    "run",
    "service_log_findings",
    "start_booking",
    "start_radicale",
    "start_referrals",
    "start_reminders",
    "start_sandbox",
    "start_service",
    "start_uvicorn",
    "table",
    "wait_until",
]


def arguments(
    description: str | None,
    *,
    budget: float = 170.0,
    database: str = "the service's DATABASE_URL (default: a SQLite file under VAR_DIR)",
    strict: str | None = None,
) -> argparse.ArgumentParser:
    """A parser with the options every script has; ``strict`` documents ``--strict``."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--database-url", default=None, help=database)
    p.add_argument("--budget", type=float, default=budget, help="hard time limit in seconds")
    p.add_argument("--json", type=Path, default=None, help="append the JSON line to this file")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, databases)")
    if strict:
        p.add_argument("--strict", action="store_true", help=strict)
    return p


def main(
    scenario: Callable[[Stack, argparse.Namespace], Awaitable[dict[str, Any]]],
    args: argparse.Namespace,
    *,
    report: Callable[[dict[str, Any]], str],
    failed: Callable[[dict[str, Any]], bool] = lambda _figures: False,
) -> int:
    """Run ``scenario`` within ``args.budget``, print ``report(figures)`` and the JSON line;
    the exit status is 1 when ``failed(figures)`` (a check, or a missed target with
    ``--strict``)."""
    figures = run(lambda stack: scenario(stack, args), budget=args.budget, keep=args.keep_tmp)
    print_out(report(figures))
    emit_json(figures, args.json)
    return 1 if failed(figures) else 0
