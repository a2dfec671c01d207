"""Hostile input against the running booking service: dates out of range get 422 naming
the field, a non-ASCII ICS token 404, undecodable bodies 400, oversized ones 413."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.integration.test_booking_api import booking, make_clinic, next_monday_at  # noqa: F401

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAR = "0001-01-01T00:00:00+01:00"


def named(response: httpx.Response, field: str) -> bool:
    return any(field in [str(p) for p in e["loc"]] for e in response.json()["detail"])


async def test_dates_out_of_range_get_422_naming_the_field(
    booking: tuple[httpx.AsyncClient, Any],  # noqa: F811
) -> None:
    client, _ = booking
    clinic = await make_clinic(client)
    body = {
        "client_id": clinic["client"]["id"],
        "service_id": clinic["service"]["id"],
        "location_id": clinic["location"]["id"],
        "start": FAR,
    }
    booked = await client.post("/v1/sessions", json=body)
    assert booked.status_code == 422, booked.text
    assert named(booked, "start")
    late = await client.post("/v1/sessions", json={**body, "start": "9999-12-31T23:59:59-01:00"})
    assert late.status_code == 422 and named(late, "start")
    params = {
        "service_id": clinic["service"]["id"],
        "location_id": clinic["location"]["id"],
        "start": FAR,
        "end": next_monday_at(18).isoformat(),
    }
    slots = await client.get("/v1/availability", params=params)
    assert slots.status_code == 422, slots.text
    assert named(slots, "start")
    listed = await client.get("/v1/sessions", params={"end": "9999-12-31T23:00:00-05:00"})
    assert listed.status_code == 422 and named(listed, "end")
    time_off = await client.post(
        f"/v1/therapists/{clinic['therapists'][0]['id']}/time-off",
        json={"start": FAR, "end": "2030-01-01T00:00:00Z"},
    )
    assert time_off.status_code == 422 and named(time_off, "start")


async def test_a_non_ascii_ics_token_is_404(
    booking: tuple[httpx.AsyncClient, Any],  # noqa: F811
) -> None:
    client, _ = booking
    clinic = await make_clinic(client)
    therapist = clinic["therapists"][0]["id"]
    feed = await client.get(f"/v1/calendars/therapists/{therapist}.ics", params={"token": "é☃"})
    assert feed.status_code == 404
    location = clinic["location"]["id"]
    feed = await client.get(f"/v1/calendars/locations/{location}.ics", params={"token": "ü"})
    assert feed.status_code == 404


async def test_undecodable_and_oversized_bodies(
    booking: tuple[httpx.AsyncClient, Any],  # noqa: F811
) -> None:
    client, _ = booking
    latin1 = await client.post(
        "/v1/clients",
        content='{"first_name": "Jos\xe9"}'.encode("latin-1"),
        headers={"Content-Type": "application/json"},
    )
    assert latin1.status_code == 400
    big = await client.post(
        "/v1/clients",
        content=b'{"first_name": "' + b"x" * (1024 * 1024) + b'"}',
        headers={"Content-Type": "application/json", "Authorization": ""},
    )
    assert big.status_code == 413
