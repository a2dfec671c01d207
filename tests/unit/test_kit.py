"""The test kit builds the same clinic through a blocking and an async client, in order."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from shared import events
from tools.kit import CallFailed, ClinicBuilder, Hours
from tools.kit.events import SessionStory, session_event


def fake_booking() -> tuple[httpx.MockTransport, list[tuple[str, str, Any]]]:
    """Answers every POST with its body and a new id; records the requests."""
    seen: list[tuple[str, str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, request.url.path, body))
        if body and body.get("name") == "refused":
            return httpx.Response(422, json={"detail": "no"})
        return httpx.Response(201, json={**(body or {}), "id": f"id{len(seen)}"})

    return httpx.MockTransport(answer), seen


def two_locations() -> ClinicBuilder:
    clinic = ClinicBuilder()
    east = clinic.location("East", rooms=2)
    west = clinic.location("West", rooms=["W"], timezone="America/Chicago")
    clinic.treatment()
    clinic.therapist("Ana", hours=[Hours(east, [0]), Hours(west, [1, 2], "10:00", "18:00")])
    clinic.client(phone="+12125550100")
    return clinic


async def test_sync_and_async_clients_make_the_same_requests_in_dependency_order() -> None:
    transport, sync_seen = fake_booking()
    with httpx.Client(transport=transport, base_url="http://booking") as client:
        made = two_locations().create_sync(client)
    transport, async_seen = fake_booking()
    async with httpx.AsyncClient(transport=transport, base_url="http://booking") as client:
        made_async = await two_locations().create(client)

    assert sync_seen == async_seen
    assert [path for _m, path, _b in sync_seen] == [
        "/v1/locations",
        "/v1/locations/id1/rooms",
        "/v1/locations/id1/rooms",
        "/v1/locations",
        "/v1/locations/id4/rooms",
        "/v1/services",
        "/v1/therapists",
        "/v1/clients",
    ]
    hours = sync_seen[6][2]["working_hours"]
    assert hours == [
        {"location_id": "id1", "weekday": 0, "start": "09:00", "end": "17:00"},
        {"location_id": "id4", "weekday": 1, "start": "10:00", "end": "18:00"},
        {"location_id": "id4", "weekday": 2, "start": "10:00", "end": "18:00"},
    ]
    assert made.ids("rooms") == made_async.ids("rooms") == ["id2", "id3", "id5"]
    body = made.session_body("2030-01-01T10:00:00+00:00")
    assert body == {
        "client_id": "id8",
        "service_id": "id6",
        "location_id": "id1",
        "start": "2030-01-01T10:00:00+00:00",
    }


def test_a_refused_request_names_the_request_and_the_answer() -> None:
    transport, _seen = fake_booking()
    clinic = ClinicBuilder()
    clinic.location("refused")
    with (
        httpx.Client(transport=transport, base_url="http://booking") as client,
        pytest.raises(CallFailed, match=r"POST /v1/locations -> 422"),
    ):
        clinic.create_sync(client)


def test_a_session_story_counts_versions_and_parses_as_the_contract() -> None:
    story = SessionStory()
    booked, moved = story.booked(), story.rescheduled(story.start.replace(year=2031))
    cancelled = story.cancelled()
    assert [e.data.version for e in (booked, moved, cancelled)] == [1, 2, 3]
    assert [e.data.status for e in (booked, moved, cancelled)] == ["booked", "booked", "cancelled"]
    for event in (booked, moved, cancelled, session_event(events.SESSION_NO_SHOW)):
        parsed = events.parse_event(event.model_dump_json().encode())
        assert parsed.data == event.data and parsed.id == event.id
