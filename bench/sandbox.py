"""The Twilio sandbox's own cost: CPU per message it accepts and reports on.

What it does, all on 127.0.0.1 with free ports and a temporary directory:

1. starts the sandbox (``python -m tools.twilio_sandbox``) and a trivial status-callback
   receiver (a raw ASGI app under uvicorn, answering 204 to every POST and counting them),
   each as its own process;
2. creates ``--messages`` (2,000) messages through the Messages API with ``--concurrency``
   (16) keep-alive clients, each with a StatusCallback to the receiver;
3. waits until the receiver has every callback (queued, sent, delivered: three per message)
   and prints the sandbox's CPU per message (``/proc/<pid>/stat``), the messages accepted
   per second and the time until the last callback arrived.

The sandbox runs on the same cores as the services a benchmark measures (issue 12,
direction 5): its CPU per message is what it takes from them.

Run from the project root::

    .venv/bin/python bench/sandbox.py
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    Stack,
    arguments,
    drive,
    log,
    machine,
    main,
    start_sandbox,
    start_uvicorn,
    table,
)
from tools.twilio_sandbox.settings import (  # noqa: E402
    DEFAULT_ACCOUNT_SID,
    DEFAULT_AUTH_TOKEN,
    DEFAULT_FROM_NUMBER,
)

# ---------------------------------------------------------------------------------------
# The receiver (imported by uvicorn in its own process as ``sandbox:receiver``)

_received = 0


async def receiver(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """204 to every POST (counted); ``GET /count`` answers the count; the rest 200."""
    global _received
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = b""
    if scope["method"] == "POST":
        _received += 1
        status = 204
    else:
        status, body = 200, str(_received).encode()
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = arguments(__doc__, budget=170.0)
    p.add_argument("--messages", type=int, default=2000, help="messages (default 2000)")
    p.add_argument("--concurrency", type=int, default=16, help="clients (default 16)")
    return p.parse_args(argv)


async def scenario(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    sandbox = await start_sandbox(stack)
    target = await start_uvicorn(stack, "receiver", "sandbox:receiver", ROOT / "bench")
    url = f"{sandbox.url}/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}/Messages.json"
    auth = (DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN)

    def form(i: int) -> dict[str, str]:
        return {
            "To": f"+1646{i:07d}",
            "From": DEFAULT_FROM_NUMBER,
            "Body": "Your appointment is tomorrow at 10:00.",
            "StatusCallback": f"{target.url}/twilio/status",
        }

    async def create(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.post(url, data=form(i), auth=auth)

    clients = [httpx.AsyncClient(timeout=30) for _ in range(args.concurrency)]
    cpu_before = sandbox.child.cpu_seconds() or 0.0
    started = time.perf_counter()
    load = await drive(clients, range(args.messages), create)
    accepted = time.perf_counter() - started
    for client in clients:
        await client.aclose()
    expected = 3 * args.messages
    async with httpx.AsyncClient(timeout=5) as client:
        while (got := int((await client.get(f"{target.url}/count")).text)) < expected:
            if time.perf_counter() - started > args.budget - 10:
                raise SystemExit(f"{got} of {expected} callbacks arrived")
            await asyncio.sleep(0.05)
    done = time.perf_counter() - started
    cpu = (sandbox.child.cpu_seconds() or 0.0) - cpu_before
    log(f"{args.messages} messages, {got} callbacks in {done:.1f}s")
    return {
        "benchmark": "sandbox",
        "messages": args.messages,
        "concurrency": args.concurrency,
        "statuses": dict(load.statuses),
        "accepted_per_s": round(args.messages / accepted, 1),
        "last_callback_s": round(done, 2),
        "callbacks": got,
        "sandbox_cpu_ms_per_message": round(1000 * cpu / args.messages, 2),
        "machine": machine(),
    }


def report(figures: dict[str, Any]) -> str:
    rows = [
        [
            f"{figures['messages']} messages, {figures['concurrency']} clients",
            figures["accepted_per_s"],
            figures["last_callback_s"],
            figures["sandbox_cpu_ms_per_message"],
        ]
    ]
    header = ["run", "accepted/s", "last callback s", "sandbox CPU ms/message"]
    return table(rows, header)


def cli(argv: list[str] | None = None) -> int:
    return main(scenario, parse_args(argv), report=report)


if __name__ == "__main__":
    sys.exit(cli())
