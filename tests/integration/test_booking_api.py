"""Booking over real HTTP with a real nats-server, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import icalendar
import nats
import pytest
import pytest_asyncio
from sqlalchemy import update

from services.booking.app import create_app
from services.booking.settings import BookingSettings
from shared import events
from shared.outbox import outbox
from tests.booking_support import make_clinic
from tests.support import ADMIN_KEY, AUTH, EventTap, eventually, serve, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="session")

NY = ZoneInfo("America/New_York")


def next_monday_at(hour: int, minute: int = 0, weeks: int = 1) -> datetime:
    today = datetime.now(NY).date()
    monday = today + timedelta(days=(7 - today.weekday()) % 7 or 7) + timedelta(weeks=weeks - 1)
    return datetime(monday.year, monday.month, monday.day, hour, minute, tzinfo=NY).astimezone(UTC)


def settings_for(database_url: str, nats_url: str, **extra: Any) -> BookingSettings:
    values: dict[str, Any] = {
        "booking_database_url": database_url,
        "nats_url": nats_url,
        "admin_api_key": ADMIN_KEY,
        "outbox_poll_seconds": 0.2,
        "retry_base_seconds": 0.05,
        "max_deliver": 3,
        # Radicale and the ICS servers of the tests run on 127.0.0.1
        # (tests/integration/test_ssrf.py shows what happens without this).
        "outbound_allowed_hosts": "127.0.0.1:*,localhost:*",
    }
    return BookingSettings(**{**values, **extra})


@pytest_asyncio.fixture(loop_scope="session")
async def booking(database_url: str, nats_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(settings_for(database_url, nats_url))
    async with serve(app) as base_url:
        await wait_ready(base_url)
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=30) as client:
            yield client, app


def session_body(clinic: dict[str, Any], start: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "client_id": clinic["client"]["id"],
        "service_id": clinic["service"]["id"],
        "location_id": clinic["location"]["id"],
        "start": start.isoformat(),
        **extra,
    }


async def test_booking_a_free_slot_announces_it_once_with_its_event_id(
    booking: Any, nats_url: str
) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    start = next_monday_at(10)
    async with EventTap(nats_url, events.SESSION_BOOKED) as tap:
        response = await client.post("/v1/sessions", json=session_body(clinic, start))
        assert response.status_code == 201, response.text
        session = response.json()
        assert session["status"] == "booked" and session["version"] == 1
        event = await tap.wait_for(lambda e: e["data"]["session_id"] == session["id"])
    assert event["type"] == "booking.session.booked"
    assert event["data"]["client"] == {
        "id": clinic["client"]["id"],
        "first_name": "Maria",
        "phone": "+12125550199",
        "sms_consent": True,
        "language": "en",
    }
    assert event["data"]["location"]["timezone"] == "America/New_York"
    msg = next(m for m in tap.messages if json.loads(m.data)["id"] == event["id"])
    assert msg.headers["Nats-Msg-Id"] == event["id"]
    assert len([e for e in tap.events() if e["data"]["session_id"] == session["id"]]) == 1


async def test_a_republished_outbox_row_is_dropped_by_jetstream(
    booking: Any, nats_url: str
) -> None:
    client, app = booking
    clinic = await make_clinic(client)
    runtime = app.state.runtime
    async with EventTap(nats_url, events.SESSION_BOOKED) as tap:
        session = (
            await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(11)))
        ).json()
        await tap.wait_for(lambda e: e["data"]["session_id"] == session["id"])
        # Pretend the relay died after publishing but before marking the row: it publishes again.
        async with runtime.uow.sessions() as db_session, db_session.begin():
            await db_session.execute(update(outbox).values(published_at=None))
        before = runtime.relay.published
        runtime.relay.wake()
        await eventually(
            lambda: _gt(runtime.relay.published, before), what="the relay to republish"
        )
        nc = await nats.connect(nats_url)
        info = await nc.jetstream().stream_info(events.BOOKING_STREAM)
        await nc.close()
    booked = [e for e in tap.events() if e["data"]["session_id"] == session["id"]]
    assert len(booked) == 1
    # The stream holds each event once although the relay sent some of them twice.
    assert info.state.messages == before


async def _gt(value: int, than: int) -> bool:
    return value > than


async def test_fifty_concurrent_requests_for_one_slot_give_exactly_one_booking(
    booking: Any,
) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    body = session_body(clinic, next_monday_at(13))
    answers = await asyncio.gather(*(client.post("/v1/sessions", json=body) for _ in range(50)))
    codes = sorted(a.status_code for a in answers)
    assert codes.count(201) == 1, codes
    assert codes.count(409) == 49, codes
    details = {a.json()["detail"] for a in answers if a.status_code == 409}
    assert all("booked" in d or "room" in d for d in details), details
    listed = (
        await client.get("/v1/sessions", params={"location_id": clinic["location"]["id"]})
    ).json()
    assert len(listed) == 1


async def test_two_therapists_and_one_room_cannot_share_the_room(booking: Any) -> None:
    client, _app = booking
    clinic = await make_clinic(client, rooms=1, therapists=2)
    start = next_monday_at(14)
    first = await client.post("/v1/sessions", json=session_body(clinic, start))
    second = await client.post(
        "/v1/sessions", json=session_body(clinic, start + timedelta(minutes=30))
    )
    assert first.status_code == 201
    assert second.status_code == 409
    assert "room" in second.json()["detail"]


async def test_idempotency_key_returns_the_first_answer(booking: Any) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    body = session_body(clinic, next_monday_at(9))
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = await client.post("/v1/sessions", json=body, headers=key)
    again = await client.post("/v1/sessions", json=body, headers=key)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    other = await client.post(
        "/v1/sessions", json=session_body(clinic, next_monday_at(15)), headers=key
    )
    assert other.status_code == 422
    assert "Idempotency-Key" in other.json()["detail"]


async def test_session_lifecycle_and_illegal_transitions(booking: Any, nats_url: str) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    session = (
        await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
    ).json()
    sid = session["id"]
    async with EventTap(nats_url, "booking.session.>") as tap:
        moved = await client.post(
            f"/v1/sessions/{sid}/reschedule", json={"start": next_monday_at(12).isoformat()}
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["version"] == 2 and moved.json()["start"].startswith(
            next_monday_at(12).strftime("%Y-%m-%dT%H")
        )
        assert (await client.post(f"/v1/sessions/{sid}/complete")).status_code == 409
        assert (await client.post(f"/v1/sessions/{sid}/check-in")).json()["status"] == "checked_in"
        done = await client.post(f"/v1/sessions/{sid}/complete")
        assert done.json()["status"] == "completed" and done.json()["version"] == 4
        refused = await client.post(f"/v1/sessions/{sid}/cancel", json={"reason": "changed mind"})
        assert refused.status_code == 409
        assert "completed" in refused.json()["detail"]
        await tap.wait_for(lambda e: e["type"] == events.SESSION_COMPLETED)
        rescheduled = await tap.wait_for(lambda e: e["type"] == events.SESSION_RESCHEDULED)
    assert rescheduled["data"]["previous_start"].startswith(
        next_monday_at(10).strftime("%Y-%m-%dT%H")
    )
    # The old time is free again: someone else can take it.
    other = await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
    assert other.status_code == 201


async def test_late_cancel_is_marked_and_the_slot_frees_up(booking: Any) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    # Next Monday is always within this location's (two-week) late-cancel window.
    strict = await client.post(
        "/v1/locations",
        json={
            "name": "Strict",
            "timezone": "America/New_York",
            "address": "2 Main St",
            "phone": "+12125550122",
            "late_cancel_hours": 24 * 14,
        },
    )
    lenient_start = next_monday_at(10)
    sid = (await client.post("/v1/sessions", json=session_body(clinic, lenient_start))).json()["id"]
    on_time = (
        await client.post(f"/v1/sessions/{sid}/cancel", json={"reason": "client called"})
    ).json()
    assert on_time["status"] == "cancelled"
    assert on_time["late_cancel"] is (lenient_start - datetime.now(UTC) < timedelta(hours=24))
    assert (
        await client.post("/v1/sessions", json=session_body(clinic, lenient_start))
    ).status_code == 201

    room = await client.post(f"/v1/locations/{strict.json()['id']}/rooms", json={"name": "R"})
    hours = [{"location_id": strict.json()["id"], "weekday": 0, "start": "09:00", "end": "17:00"}]
    await client.post(
        "/v1/therapists",
        json={"name": "Kim", "modalities": ["medical_massage"], "working_hours": hours},
    )
    assert room.status_code == 201
    body = {**session_body(clinic, next_monday_at(11)), "location_id": strict.json()["id"]}
    late_id = (await client.post("/v1/sessions", json=body)).json()["id"]
    late = (
        await client.post(f"/v1/sessions/{late_id}/cancel", json={"reason": "client called"})
    ).json()
    assert late["late_cancel"] is True


async def test_bad_input_gets_a_4xx_naming_the_field(booking: Any) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    bad_zone = await client.post(
        "/v1/locations",
        json={"name": "X", "timezone": "Mars/Olympus", "address": "a", "phone": "+12125550100"},
    )
    assert bad_zone.status_code == 422 and "timezone" in bad_zone.text
    bad_phone = await client.post(
        "/v1/clients", json={"first_name": "A", "last_name": "B", "phone": "12"}
    )
    assert bad_phone.status_code == 422 and "phone" in bad_phone.text
    naive = await client.post(
        "/v1/sessions",
        json={**session_body(clinic, next_monday_at(10)), "start": "2026-12-01T10:00:00"},
    )
    assert naive.status_code == 422 and "start" in naive.text
    assert (await client.get("/v1/sessions/does-not-exist")).status_code == 404
    assert (
        await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(3)))
    ).status_code == 409
    unauthenticated = await client.get("/v1/locations", headers={"Authorization": "Bearer nope"})
    assert unauthenticated.status_code == 401


async def test_front_desk_keys_see_only_their_locations(booking: Any) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    other = await client.post(
        "/v1/locations",
        json={
            "name": "Uptown",
            "timezone": "America/New_York",
            "address": "9 Hill",
            "phone": "+12125550111",
        },
    )
    key = (
        await client.post(
            "/v1/api-keys",
            json={"name": "desk", "role": "front_desk", "location_ids": [clinic["location"]["id"]]},
        )
    ).json()["api_key"]
    desk = {"Authorization": f"Bearer {key}"}
    mine = await client.get("/v1/locations", headers=desk)
    assert [loc["id"] for loc in mine.json()] == [clinic["location"]["id"]]
    assert (
        await client.get(f"/v1/locations/{other.json()['id']}", headers=desk)
    ).status_code == 404
    assert (
        await client.post(
            "/v1/services",
            json={"name": "x", "modality": "y", "duration_minutes": 30},
            headers=desk,
        )
    ).status_code == 403
    # A client of no location, without sessions, is nobody's front desk's yet.
    assert (
        await client.get(f"/v1/clients/{clinic['client']['id']}", headers=desk)
    ).status_code == 404
    walk_in = await client.post(
        "/v1/clients",
        json={"first_name": "Ana", "last_name": "Ruiz", "phone": "+12125550177"},
        headers=desk,
    )
    assert walk_in.json()["home_location_id"] == clinic["location"]["id"], walk_in.text
    body = {**session_body(clinic, next_monday_at(10)), "client_id": walk_in.json()["id"]}
    booked = await client.post("/v1/sessions", json=body, headers=desk)
    assert booked.status_code == 201


async def test_ics_feed_follows_changes_with_a_stable_uid(booking: Any) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    session = (
        await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
    ).json()
    feed_url = clinic["therapists"][0]["ics_url"]
    path = feed_url.split("://", 1)[1].split("/", 1)[1]

    async def vevent() -> icalendar.Event:
        body = (await client.get("/" + path, headers={})).content
        cal = icalendar.Calendar.from_ical(body)
        return next(e for e in cal.walk("VEVENT") if str(e["UID"]).startswith(session["id"]))

    first = await vevent()
    assert str(first["SUMMARY"]).endswith("Maria L.")
    assert "Lopez" not in str(first["SUMMARY"])
    assert first["DTSTART"].params["TZID"] == "America/New_York"
    await client.post(f"/v1/sessions/{session['id']}/cancel", json={"reason": "flu"})
    second = await vevent()
    assert second["UID"] == first["UID"]
    assert int(second["SEQUENCE"]) > int(first["SEQUENCE"])
    assert str(second["STATUS"]) == "CANCELLED"
    assert "flu" not in (await client.get("/" + path)).text
    # A new token revokes the old URL.
    rotated = await client.post(f"/v1/therapists/{clinic['therapists'][0]['id']}/ics-token")
    assert rotated.status_code == 200
    assert (await client.get("/" + path)).status_code == 404


async def test_availability_skips_booked_time_and_time_off(booking: Any) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    params = {
        "service_id": clinic["service"]["id"],
        "location_id": clinic["location"]["id"],
        "start": next_monday_at(0).isoformat(),
        "end": next_monday_at(23).isoformat(),
    }
    free = (await client.get("/v1/availability", params=params)).json()
    assert free[0]["start"].startswith(next_monday_at(9).strftime("%Y-%m-%dT%H:%M"))
    await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(9)))
    after = {s["start"][:16] for s in (await client.get("/v1/availability", params=params)).json()}
    assert next_monday_at(9).strftime("%Y-%m-%dT%H:%M") not in after
    assert next_monday_at(10).strftime("%Y-%m-%dT%H:%M") not in after  # 09:00-10:15 with the buffer
    assert next_monday_at(10, 15).strftime("%Y-%m-%dT%H:%M") in after
    therapist_id = clinic["therapists"][0]["id"]
    off = await client.post(
        f"/v1/therapists/{therapist_id}/time-off",
        json={
            "start": next_monday_at(12).isoformat(),
            "end": next_monday_at(17).isoformat(),
            "reason": "training",
        },
    )
    assert off.status_code == 201
    later = {s["start"][:16] for s in (await client.get("/v1/availability", params=params)).json()}
    assert not any(s >= next_monday_at(11, 15).strftime("%Y-%m-%dT%H:%M") for s in later)
