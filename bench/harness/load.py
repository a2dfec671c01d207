"""The load drivers: one keep-alive client per simulated terminal, closed or open loop."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx


def api_client(base: str, key: str | None = None, *, timeout: float = 30.0) -> httpx.AsyncClient:
    """One client = one keep-alive connection (like one front-desk terminal or one web worker)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        base_url=base,
        headers=headers,
        timeout=timeout,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )


@dataclass
class LoadResult:
    latencies_ms: list[float]
    statuses: Counter[int]
    errors: Counter[str]
    wall_s: float
    bodies: list[tuple[int, Any]]

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    def count(self, status: int) -> int:
        return self.statuses.get(status, 0)

    def rate(self, status: int | None = None) -> float:
        n = self.requests if status is None else self.count(status)
        return n / self.wall_s if self.wall_s > 0 else 0.0


Send = Callable[[httpx.AsyncClient, Any], Awaitable[httpx.Response]]


async def drive(
    clients: Sequence[httpx.AsyncClient],
    items: Iterable[Any],
    send: Send,
    *,
    keep_bodies: bool = False,
) -> LoadResult:
    """Closed-loop load: one task per client, each sends the next item as soon as it is done.

    Latency is measured around ``send`` (request out to response fully read); the rate is
    requests over the wall time from the first send to the last answer.
    """
    source = iter(items)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    bodies: list[tuple[int, Any]] = []

    async def worker(client: httpx.AsyncClient) -> None:
        for item in source:
            started = time.perf_counter()
            try:
                response = await send(client, item)
            except httpx.HTTPError as exc:
                latencies.append((time.perf_counter() - started) * 1000)
                errors[type(exc).__name__] += 1
                statuses[0] += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[response.status_code] += 1
            if keep_bodies or response.status_code >= 300:
                try:
                    body: Any = response.json()
                except ValueError:
                    body = response.text[:300]
                bodies.append((response.status_code, body))

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    wall = time.perf_counter() - started
    return LoadResult(latencies, statuses, errors, wall, bodies)


async def drive_with(
    base: str,
    key: str | None,
    concurrency: int,
    items: Iterable[Any],
    send: Send,
    *,
    keep_bodies: bool = False,
) -> LoadResult:
    """:func:`drive` with ``concurrency`` fresh :func:`api_client`\\ s, closed afterwards."""
    clients = [api_client(base, key) for _ in range(concurrency)]
    try:
        return await drive(clients, items, send, keep_bodies=keep_bodies)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


async def open_loop(
    base: str, key: str, items: Iterable[Any], send: Send, rate: float
) -> LoadResult:
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

        async def one(item: Any) -> None:
            started = time.perf_counter()
            try:
                response = await send(client, item)
                statuses[response.status_code] += 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                statuses[0] += 1
            latencies.append((time.perf_counter() - started) * 1000)

        start = time.perf_counter()
        tasks = []
        for i, item in enumerate(items):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(item)))
        await asyncio.gather(*tasks)
    return LoadResult(latencies, statuses, errors, time.perf_counter() - start, [])


async def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.25
) -> float:
    """Poll a blocking ``predicate`` (in a thread) until true; returns when (perf_counter)."""
    deadline = time.perf_counter() + timeout
    while True:
        if await asyncio.to_thread(predicate):
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(every)


def cpu_per_request(before: float | None, after: float | None, requests: int) -> float | None:
    """Server CPU milliseconds per request between two :meth:`Child.cpu_seconds` readings."""
    if before is None or after is None or not requests:
        return None
    return round((after - before) * 1000 / requests, 2)
