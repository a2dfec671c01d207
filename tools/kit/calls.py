"""HTTP calls as data, so one builder serves both kinds of client.

The demo seed runs inside the synchronous launcher (``make run``); tests and benchmarks run
in an event loop. A builder is written once as a generator that yields :class:`Call`\\ s and
receives each answer's JSON; :func:`run` (``httpx.AsyncClient``) and :func:`run_sync`
(``httpx.Client``) drive it. :func:`call` and :func:`call_sync` are the one-request case.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One request a builder needs, and the statuses that mean it worked."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    expect: tuple[int, ...] = field(default=(200, 201))


#: A builder: yields calls, is sent each answer's JSON, returns what it made.
Steps = Generator[Call, Any, T]


class CallFailed(RuntimeError):
    """A set-up request did not succeed; the message names the request and the answer."""


def bearer(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def _expected(expect: int | Iterable[int]) -> tuple[int, ...]:
    return (expect,) if isinstance(expect, int) else tuple(expect)


def _answer(call: Call, response: httpx.Response) -> Any:
    if response.status_code not in call.expect:
        raise CallFailed(
            f"{call.method} {call.path} -> {response.status_code} "
            f"(expected {'/'.join(map(str, call.expect))}): {response.text[:500]}"
        )
    return response.json() if response.content else None


def _kwargs(call: Call) -> dict[str, Any]:
    return {"json": call.json, "params": call.params}


async def run(client: httpx.AsyncClient, steps: Steps[T]) -> T:
    """Drive ``steps`` with an async client; returns what the builder returns."""
    try:
        step = next(steps)
        while True:
            response = await client.request(step.method, step.path, **_kwargs(step))
            step = steps.send(_answer(step, response))
    except StopIteration as done:
        return done.value


def run_sync(client: httpx.Client, steps: Steps[T]) -> T:
    """Drive ``steps`` with a blocking client (the launcher's seed)."""
    try:
        step = next(steps)
        while True:
            response = client.request(step.method, step.path, **_kwargs(step))
            step = steps.send(_answer(step, response))
    except StopIteration as done:
        return done.value


def one(call: Call) -> Steps[Any]:
    return (yield call)


async def call(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    expect: int | Iterable[int] = (200, 201),
    json: Any = None,
    params: dict[str, Any] | None = None,
) -> Any:
    """One request that must succeed; returns its JSON."""
    return await run(client, one(Call(method, path, json, params, _expected(expect))))


def call_sync(
    client: httpx.Client,
    method: str,
    path: str,
    *,
    expect: int | Iterable[int] = (200, 201),
    json: Any = None,
    params: dict[str, Any] | None = None,
) -> Any:
    return run_sync(client, one(Call(method, path, json, params, _expected(expect))))
