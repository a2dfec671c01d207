"""Two booking replicas on one database: a change of set-up made through one holds at the
other for the very next request (each process keeps the set-up in memory, checked in
every transaction: ``services.booking.setup_cache``), and so does a change made in the
database by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text

from services.booking.app import create_app
from shared.db import create_engine
from tests.booking_support import make_clinic
from tests.integration.test_booking_api import next_monday_at, session_body, settings_for
from tests.support import AUTH, serve, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def replicas(
    database_url: str, nats_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    first = create_app(settings_for(database_url, nats_url))
    second = create_app(settings_for(database_url, nats_url, migrate_on_start=False))
    async with serve(first) as a_url:
        await wait_ready(a_url)
        async with serve(second) as b_url:
            await wait_ready(b_url)
            async with (
                httpx.AsyncClient(base_url=a_url, headers=AUTH, timeout=30) as a,
                httpx.AsyncClient(base_url=b_url, headers=AUTH, timeout=30) as b,
            ):
                yield a, b


async def free_starts(api: httpx.AsyncClient, clinic: dict[str, Any]) -> list[str]:
    day = next_monday_at(0)
    answer = await api.get(
        "/v1/availability",
        params={
            "service_id": clinic["service"]["id"],
            "location_id": clinic["location"]["id"],
            "start": day.isoformat(),
            "end": next_monday_at(23, 59).isoformat(),
        },
    )
    assert answer.status_code == 200, answer.text
    return [s["start"] for s in answer.json()]


async def test_a_closure_added_at_one_replica_holds_at_the_other_at_once(replicas: Any) -> None:
    a, b = replicas
    clinic = await make_clinic(a)
    before = await free_starts(b, clinic)  # b has read the set-up now
    assert next_monday_at(10).isoformat() in [s.replace("Z", "+00:00") for s in before]
    closed = await a.post(
        f"/v1/locations/{clinic['location']['id']}/closures",
        json={
            "start": next_monday_at(0).isoformat(),
            "end": next_monday_at(23, 59).isoformat(),
            "reason": "repairs",
        },
    )
    assert closed.status_code == 201, closed.text
    assert await free_starts(b, clinic) == []
    refused = await b.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
    assert refused.status_code == 409, refused.text


async def test_retiring_the_only_room_or_therapist_at_one_replica_holds_at_the_other(
    replicas: Any,
) -> None:
    a, b = replicas
    clinic = await make_clinic(a)
    assert await free_starts(b, clinic)
    room = clinic["rooms"][0]
    retired = await a.patch(
        f"/v1/locations/{clinic['location']['id']}/rooms/{room['id']}", json={"active": False}
    )
    assert retired.status_code == 200, retired.text
    assert await free_starts(b, clinic) == []
    refused = await b.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
    assert refused.status_code == 409, refused.text
    back = await a.patch(
        f"/v1/locations/{clinic['location']['id']}/rooms/{room['id']}", json={"active": True}
    )
    assert back.status_code == 200, back.text
    booked = await b.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
    assert booked.status_code == 201, booked.text


async def test_a_change_made_in_the_database_by_hand_is_seen_at_once(
    replicas: Any, database_url: str
) -> None:
    a, b = replicas
    clinic = await make_clinic(a)
    assert await free_starts(b, clinic)
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE treatments SET active = false WHERE id = :id"),
                {"id": clinic["service"]["id"]},
            )
    finally:
        await engine.dispose()
    for api in (a, b):
        refused = await api.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
        assert refused.status_code == 409, refused.text
        assert "retired" in refused.text
