"""Schemathesis over each service's ``/openapi.json``, against the service running under
uvicorn: no request it can build gets a 5xx (CONTRACT "HTTP"), on SQLite and, when
TEST_POSTGRES_URL is set, on PostgreSQL (which refuses what SQLite stores: NUL characters).

Bounded: ``FUZZ_EXAMPLES`` examples per operation and generation mode (positive and
negative), default 10, so the three services take well under three minutes on two cores.
Every run prints its seed; ``FUZZ_SEED=<seed>`` replays the same cases. A failure lists
each 5xx with a curl command that reproduces it.
"""

# ruff: noqa: E402  (the imports after the skip need schemathesis)
from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import httpx
import pytest

# `make setup` installs it (and checks it imports); an older virtual environment skips.
schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
import requests  # after the skip: only needed with schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis import GenerationMode

from services.booking.app import create_app as booking_app
from services.referrals.app import create_app as referrals_app
from services.reminders.app import create_app as reminders_app
from shared.natsd import free_port
from tests.integration.test_booking_api import make_clinic
from tests.integration.test_booking_api import settings_for as booking_settings
from tests.referrals_support import referrals_settings
from tests.reminders_support import settings_for as reminders_settings
from tests.support import AUTH, serve, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="session")

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
SEED = int(os.environ.get("FUZZ_SEED") or random.randrange(2**32))


def fuzz(base_url: str, run_seed: int) -> list[str]:
    """Every operation of the service at ``base_url``: the 5xx answers, described."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    http = requests.Session()

    def probe_of(operation: Any, mode: GenerationMode) -> Any:
        @seed(run_seed)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def probe(case: Any) -> None:
            try:
                response = case.call(
                    base_url=base_url, session=http, headers=dict(AUTH), timeout=30
                )
            except requests.RequestException as exc:
                # requests refusing to send what was generated is no answer of ours; a
                # broken connection is.
                if "Connection" in type(exc).__name__:
                    failures.append(f"{operation.method.upper()} {operation.path}: {exc!r}")
                return
            if response.status_code >= 500:
                failures.append(
                    f"{response.status_code} {operation.method.upper()} {operation.path} "
                    f"({mode}): {response.text[:200]}\n    "
                    + case.as_curl_command(headers=dict(AUTH))
                )

        return probe

    for result in schema.get_all_operations():
        operation = result.ok()
        # Negative data for path parameters alone is slow to find (any string is a valid
        # id) and tells little: negative mode goes where bodies, queries or headers are.
        negative = bool(operation.body or operation.query or operation.headers)
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if negative else [])
        for mode in modes:
            began = time.monotonic()
            try:
                probe_of(operation, mode)()
            except Exception as exc:  # no data satisfies this operation's schema in this mode
                if "Unsatisfiable" not in type(exc).__name__:
                    raise
            if os.environ.get("FUZZ_TIMES"):
                print(
                    f"{time.monotonic() - began:6.2f}s {operation.method} {operation.path} {mode}"
                )
    return failures


async def run_fuzz(name: str, base_url: str) -> None:
    print(f"\nfuzzing {name} with FUZZ_SEED={SEED} FUZZ_EXAMPLES={EXAMPLES}")
    failures = await asyncio.to_thread(fuzz, base_url, SEED)
    assert not failures, (
        f"{name}: {len(failures)} responses 5xx (replay with FUZZ_SEED={SEED}):\n"
        + "\n".join(failures[:30])
    )


async def test_booking_answers_no_5xx(database_url: str, nats_url: str) -> None:
    app = booking_app(booking_settings(database_url, nats_url))
    async with serve(app) as base_url:
        await wait_ready(base_url)
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=30) as client:
            await make_clinic(client)  # something to find, so not every answer is a 404
        await run_fuzz("booking", base_url)


async def test_reminders_answers_no_5xx(database_url: str, nats_url: str) -> None:
    port = free_port()
    settings = reminders_settings(database_url, nats_url, "http://127.0.0.1:9", port)
    async with serve(reminders_app(settings), port) as base_url:
        await wait_ready(base_url)
        await run_fuzz("reminders", base_url)


async def test_referrals_answers_no_5xx(database_url: str, nats_url: str) -> None:
    app = referrals_app(referrals_settings(database_url, nats_url))
    async with serve(app) as base_url:
        await wait_ready(base_url)
        await run_fuzz("referrals", base_url)
