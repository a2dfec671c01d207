"""Changing the clinic after set-up, over real HTTP with a real nats-server (SQLite, PostgreSQL):
renames, retirements, working-hours versions, time off changes, closures, moves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import icalendar
import pytest
import pytest_asyncio

from services.booking.app import create_app
from tests.integration.test_booking_api import (
    make_clinic,
    next_monday_at,
    session_body,
    settings_for,
)
from tests.support import AUTH, EventTap, serve, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="session")

NY = ZoneInfo("America/New_York")


@pytest_asyncio.fixture(loop_scope="session")
async def booking(database_url: str, nats_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(settings_for(database_url, nats_url))
    async with serve(app) as base_url:
        await wait_ready(base_url)
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=30) as client:
            yield client, app


def monday_params(clinic: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "service_id": clinic["service"]["id"],
        "location_id": clinic["location"]["id"],
        "start": next_monday_at(0).isoformat(),
        "end": next_monday_at(23).isoformat(),
        **extra,
    }


async def free_starts(client: httpx.AsyncClient, params: dict[str, Any]) -> list[str]:
    response = await client.get("/v1/availability", params=params)
    assert response.status_code == 200, response.text
    return [s["start"][:16] for s in response.json()]


def hhmm(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M")


async def feed_uids(client: httpx.AsyncClient, ics_url: str) -> set[str]:
    path = "/" + ics_url.split("://", 1)[1].split("/", 1)[1]
    cal = icalendar.Calendar.from_ical((await client.get(path)).content)
    return {str(e["UID"]).split("@")[0] for e in cal.walk("VEVENT")}


async def test_location_patch_renames_announces_and_guards_the_timezone(
    booking: Any, nats_url: str
) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    location_id = clinic["location"]["id"]
    async with EventTap(nats_url, "booking.location.updated") as tap:
        response = await client.patch(
            f"/v1/locations/{location_id}",
            json={"name": "Riverside", "phone": "(212) 555-0142", "late_cancel_hours": 12},
        )
        assert response.status_code == 200, response.text
        event = await tap.wait_for(lambda e: e["data"]["id"] == location_id)
    shown = (await client.get(f"/v1/locations/{location_id}")).json()
    assert shown["name"] == "Riverside" and shown["phone"] == "+12125550142"
    assert shown["late_cancel_hours"] == 12
    assert event["data"]["name"] == "Riverside" and event["data"]["phone"] == "+12125550142"
    assert "ics_url" not in event["data"] and "ics_token" not in str(event["data"])
    assert event["data"]["rooms"][0]["name"] == "Room 0"

    # No future session yet: the zone may change; with one it may not.
    moved = await client.patch(f"/v1/locations/{location_id}", json={"timezone": "America/Chicago"})
    assert moved.status_code == 200 and moved.json()["timezone"] == "America/Chicago"
    await client.patch(f"/v1/locations/{location_id}", json={"timezone": "America/New_York"})
    booked = await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
    assert booked.status_code == 201, booked.text
    refused = await client.patch(
        f"/v1/locations/{location_id}", json={"timezone": "America/Denver"}
    )
    assert refused.status_code == 409 and "future sessions" in refused.json()["detail"]
    assert (
        await client.patch(f"/v1/locations/{location_id}", json={"name": None})
    ).status_code == 422
    assert (await client.patch("/v1/locations/nope", json={"name": "x"})).status_code == 404


async def test_a_retired_room_service_or_therapist_is_offered_no_more_but_keeps_its_sessions(
    booking: Any, nats_url: str
) -> None:
    client, _app = booking
    clinic = await make_clinic(client, rooms=2, therapists=2)
    location_id = clinic["location"]["id"]
    booked = (
        await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
    ).json()
    params = monday_params(clinic)
    assert hhmm(next_monday_at(10)) in await free_starts(client, params)  # a second pair is free

    # Retire the other room: 10:00 is gone (the only active room is taken then).
    other_room = next(r for r in clinic["rooms"] if r["id"] != booked["room_id"])
    retired = await client.patch(
        f"/v1/locations/{location_id}/rooms/{other_room['id']}", json={"active": False}
    )
    assert retired.status_code == 200 and retired.json()["active"] is False
    assert hhmm(next_monday_at(10)) not in await free_starts(client, params)
    rooms = (await client.get(f"/v1/locations/{location_id}/rooms")).json()
    assert {r["id"]: r["active"] for r in rooms}[other_room["id"]] is False

    # Retire the therapist who has the session: the other one is offered; the session stays.
    keeper = booked["therapist_id"]
    other = next(t["id"] for t in clinic["therapists"] if t["id"] != keeper)
    async with EventTap(nats_url, "booking.therapist.updated") as tap:
        gone = await client.patch(f"/v1/therapists/{keeper}", json={"active": False})
        assert gone.status_code == 200 and gone.json()["active"] is False
        event = await tap.wait_for(lambda e: e["data"]["id"] == keeper)
    assert event["data"]["active"] is False and "ics_url" not in event["data"]
    assert event["data"]["working_hours"][0]["start"] == "09:00"
    slots = (await client.get("/v1/availability", params=params)).json()
    assert slots and {s["therapist_id"] for s in slots} == {other}
    named = await client.post(
        "/v1/sessions", json=session_body(clinic, next_monday_at(14), therapist_id=keeper)
    )
    assert named.status_code == 409 and "no longer active" in named.json()["detail"]
    still = (await client.get(f"/v1/sessions/{booked['id']}")).json()
    assert still["status"] == "booked" and still["therapist_id"] == keeper
    therapist = next(t for t in clinic["therapists"] if t["id"] == keeper)
    assert booked["id"] in await feed_uids(client, therapist["ics_url"])

    # Retire the treatment: nothing is offered nor booked for it; renames still work.
    service_id = clinic["service"]["id"]
    patched = await client.patch(
        f"/v1/services/{service_id}", json={"active": False, "name": "Massage (old)"}
    )
    assert patched.status_code == 200 and patched.json()["active"] is False
    assert (await client.get("/v1/availability", params=params)).status_code == 409
    refused = await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(15)))
    assert refused.status_code == 409 and "retired" in refused.json()["detail"]
    assert (await client.get(f"/v1/sessions/{booked['id']}")).json()["status"] == "booked"
    assert booked["id"] in await feed_uids(client, clinic["location"]["ics_url"])
    back = await client.patch(f"/v1/services/{service_id}", json={"active": True})
    assert back.json()["active"] is True and back.json()["name"] == "Massage (old)"


def every_day(location_id: str, start: str, end: str) -> list[dict[str, Any]]:
    return [
        {"location_id": location_id, "weekday": d, "start": start, "end": end} for d in range(7)
    ]


def next_dst_change(tz: ZoneInfo, after: date) -> date:
    """The first local date after ``after`` whose UTC offset differs from the day before."""
    day = after
    while True:
        noon = datetime(day.year, day.month, day.day, 12, tzinfo=tz)
        if noon.utcoffset() != (noon + timedelta(days=1)).utcoffset():
            return day + timedelta(days=1)
        day += timedelta(days=1)


async def first_start_on(
    client: httpx.AsyncClient, clinic: dict[str, Any], day: date
) -> tuple[str, str]:
    """(first, last) free local start on ``day`` at the clinic, as HH:MM."""
    start = datetime(day.year, day.month, day.day, tzinfo=NY)
    params = {
        "service_id": clinic["service"]["id"],
        "location_id": clinic["location"]["id"],
        "start": start.astimezone(UTC).isoformat(),
        "end": (start + timedelta(days=1)).astimezone(UTC).isoformat(),
    }
    response = await client.get("/v1/availability", params=params)
    assert response.status_code == 200, response.text
    local = [datetime.fromisoformat(s["start"]).astimezone(NY) for s in response.json()]
    assert local, f"nothing free on {day}"
    return local[0].strftime("%H:%M"), local[-1].strftime("%H:%M")


async def test_a_new_week_of_hours_holds_from_its_date_and_reports_sessions_it_leaves_out(
    booking: Any,
) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    location_id = clinic["location"]["id"]
    therapist_id = clinic["therapists"][0]["id"]
    week1 = next_monday_at(10).astimezone(NY).date()
    week2 = week1 + timedelta(days=7)
    early = datetime(week2.year, week2.month, week2.day, 9, 30, tzinfo=NY).astimezone(UTC)
    inside = datetime(week2.year, week2.month, week2.day, 13, tzinfo=NY).astimezone(UTC)
    left_out = (await client.post("/v1/sessions", json=session_body(clinic, early))).json()
    kept = (await client.post("/v1/sessions", json=session_body(clinic, inside))).json()

    response = await client.put(
        f"/v1/therapists/{therapist_id}/working-hours",
        json={
            "effective_from": week2.isoformat(),
            "working_hours": every_day(location_id, "12:00", "17:00"),
        },
    )
    assert response.status_code == 200, response.text
    assert [c["session_id"] for c in response.json()["conflicts"]] == [left_out["id"]]
    assert (await client.get(f"/v1/sessions/{left_out['id']}")).json()["status"] == "booked"
    assert kept["id"] not in {c["session_id"] for c in response.json()["conflicts"]}

    assert (await first_start_on(client, clinic, week1))[0] == "09:00"
    assert (await first_start_on(client, clinic, week2 + timedelta(days=1)))[0] == "12:00"
    refused = await client.post(
        "/v1/sessions", json=session_body(clinic, early + timedelta(days=1))
    )
    assert refused.status_code == 409

    versions = (await client.get(f"/v1/therapists/{therapist_id}/working-hours")).json()
    assert [v["effective_from"] for v in versions["versions"]] == ["1970-01-01", week2.isoformat()]
    assert versions["versions"][1]["working_hours"][0]["start"] == "12:00"
    # The therapist's own JSON shows the week in force today.
    shown = (await client.get(f"/v1/therapists/{therapist_id}")).json()
    assert shown["working_hours"][0]["start"] == "09:00"

    # Putting the same date again replaces that version; an empty week means no work.
    again = await client.put(
        f"/v1/therapists/{therapist_id}/working-hours",
        json={"effective_from": week2.isoformat(), "working_hours": []},
    )
    assert {c["session_id"] for c in again.json()["conflicts"]} == {left_out["id"], kept["id"]}
    after = await client.get(
        "/v1/availability",
        params={
            **monday_params(clinic),
            "start": (early - timedelta(hours=5)).isoformat(),
            "end": (early + timedelta(hours=12)).isoformat(),
        },
    )
    assert after.json() == []
    assert (await first_start_on(client, clinic, week1))[0] == "09:00"
    bad = await client.put(
        f"/v1/therapists/{therapist_id}/working-hours",
        json={
            "effective_from": week2.isoformat(),
            "working_hours": every_day("nowhere", "09:00", "10:00"),
        },
    )
    assert bad.status_code == 422
    ancient = await client.put(
        f"/v1/therapists/{therapist_id}/working-hours",
        json={"effective_from": "0001-01-01", "working_hours": []},
    )
    assert ancient.status_code == 422


async def test_a_new_week_starting_in_the_week_of_a_dst_change_keeps_wall_clock_hours(
    booking: Any,
) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    location_id = clinic["location"]["id"]
    therapist_id = clinic["therapists"][0]["id"]
    await client.patch(f"/v1/locations/{location_id}", json={"horizon_days": 400})
    change = next_dst_change(NY, datetime.now(NY).date() + timedelta(days=3))
    since = change - timedelta(days=2)
    response = await client.put(
        f"/v1/therapists/{therapist_id}/working-hours",
        json={
            "effective_from": since.isoformat(),
            "working_hours": every_day(location_id, "10:00", "14:00"),
        },
    )
    assert response.status_code == 200, response.text
    assert await first_start_on(client, clinic, since - timedelta(days=1)) == ("09:00", "16:00")
    assert await first_start_on(client, clinic, since) == ("10:00", "13:00")
    assert await first_start_on(client, clinic, change) == ("10:00", "13:00")
    assert await first_start_on(client, clinic, change + timedelta(days=1)) == ("10:00", "13:00")


async def test_time_off_can_be_corrected_and_withdrawn_answering_its_conflicts(
    booking: Any,
) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    therapist_id = clinic["therapists"][0]["id"]
    session = (
        await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(15)))
    ).json()
    created = await client.post(
        f"/v1/therapists/{therapist_id}/time-off",
        json={"start": next_monday_at(9).isoformat(), "end": next_monday_at(12).isoformat()},
    )
    time_off = created.json()
    assert created.status_code == 201 and time_off["conflicts"] == []
    params = monday_params(clinic)
    assert hhmm(next_monday_at(9)) not in await free_starts(client, params)
    # New time off over the booked session answers it, like every change of hours.
    over = await client.post(
        f"/v1/therapists/{therapist_id}/time-off",
        json={"start": next_monday_at(14).isoformat(), "end": next_monday_at(16).isoformat()},
    )
    assert over.status_code == 201, over.text
    (conflict,) = over.json()["conflicts"]
    assert conflict["session_id"] == session["id"] and conflict["status"] == "booked"
    assert datetime.fromisoformat(conflict["start"]) == datetime.fromisoformat(session["start"])
    assert over.json()["conflicting_session_ids"] == [session["id"]]
    assert (
        await client.delete(f"/v1/therapists/{therapist_id}/time-off/{over.json()['id']}")
    ).status_code == 204

    longer = await client.patch(
        f"/v1/therapists/{therapist_id}/time-off/{time_off['id']}",
        json={"end": next_monday_at(17).isoformat(), "reason": "training"},
    )
    assert longer.status_code == 200, longer.text
    assert longer.json()["reason"] == "training"
    assert [c["session_id"] for c in longer.json()["conflicts"]] == [session["id"]]
    assert (await client.get(f"/v1/sessions/{session['id']}")).json()["status"] == "booked"
    assert await free_starts(client, params) == []

    backwards = await client.patch(
        f"/v1/therapists/{therapist_id}/time-off/{time_off['id']}",
        json={"end": next_monday_at(8).isoformat()},
    )
    assert backwards.status_code == 422
    deleted = await client.delete(f"/v1/therapists/{therapist_id}/time-off/{time_off['id']}")
    assert deleted.status_code == 204
    assert hhmm(next_monday_at(9)) in await free_starts(client, params)
    assert (await client.get(f"/v1/therapists/{therapist_id}/time-off")).json() == []
    again = await client.delete(f"/v1/therapists/{therapist_id}/time-off/{time_off['id']}")
    assert again.status_code == 404


async def test_a_closure_blocks_every_therapist_and_room_and_lists_what_it_overlaps(
    booking: Any,
) -> None:
    client, _app = booking
    clinic = await make_clinic(client, rooms=2, therapists=2)
    location_id = clinic["location"]["id"]
    session = (
        await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
    ).json()
    closed = await client.post(
        f"/v1/locations/{location_id}/closures",
        json={
            "start": next_monday_at(0).isoformat(),
            "end": next_monday_at(13).isoformat(),
            "reason": "burst pipe",
        },
    )
    assert closed.status_code == 201, closed.text
    closure = closed.json()
    assert [c["session_id"] for c in closure["conflicts"]] == [session["id"]]
    assert (await client.get(f"/v1/sessions/{session['id']}")).json()["status"] == "booked"
    starts = await free_starts(client, monday_params(clinic))
    assert starts and min(starts) == hhmm(next_monday_at(13))
    for therapist in clinic["therapists"]:
        refused = await client.post(
            "/v1/sessions",
            json=session_body(clinic, next_monday_at(11), therapist_id=therapist["id"]),
        )
        assert refused.status_code == 409 and "closed" in refused.json()["detail"]
    listed = (await client.get(f"/v1/locations/{location_id}/closures")).json()
    assert [c["reason"] for c in listed] == ["burst pipe"]
    bad = await client.post(
        f"/v1/locations/{location_id}/closures",
        json={"start": next_monday_at(13).isoformat(), "end": next_monday_at(12).isoformat()},
    )
    assert bad.status_code == 422
    gone = await client.delete(f"/v1/locations/{location_id}/closures/{closure['id']}")
    assert gone.status_code == 204
    assert hhmm(next_monday_at(11)) in await free_starts(client, monday_params(clinic))
    assert (
        await client.delete(f"/v1/locations/{location_id}/closures/{closure['id']}")
    ).status_code == 404


async def test_a_reschedule_can_move_to_another_location_and_therapist(
    booking: Any, nats_url: str
) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    uptown = (
        await client.post(
            "/v1/locations",
            json={
                "name": "Uptown",
                "timezone": "America/New_York",
                "address": "9 High St",
                "phone": "+12125550111",
            },
        )
    ).json()
    room = (await client.post(f"/v1/locations/{uptown['id']}/rooms", json={"name": "Blue"})).json()
    there = (
        await client.post(
            "/v1/therapists",
            json={
                "name": "Uptown therapist",
                "modalities": ["medical_massage"],
                "working_hours": every_day(uptown["id"], "08:00", "18:00"),
            },
        )
    ).json()
    session = (
        await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
    ).json()
    here = session["therapist_id"]
    path = f"/v1/sessions/{session['id']}/reschedule"

    stays = await client.post(
        path,
        json={
            "start": next_monday_at(9).isoformat(),
            "location_id": uptown["id"],
            "therapist_id": here,
        },
    )
    assert stays.status_code == 409, stays.text  # that therapist does not work uptown
    async with EventTap(nats_url, "booking.session.rescheduled") as tap:
        moved = await client.post(
            path, json={"start": next_monday_at(8).isoformat(), "location_id": uptown["id"]}
        )
        assert moved.status_code == 200, moved.text
        event = await tap.wait_for(lambda e: e["data"]["session_id"] == session["id"])
    body = moved.json()
    assert body["location_id"] == uptown["id"] and body["therapist_id"] == there["id"]
    assert body["room_id"] == room["id"] and body["status"] == "booked"
    assert event["data"]["location"]["name"] == "Uptown"
    assert event["data"]["therapist"]["id"] == there["id"]
    assert session["id"] in await feed_uids(client, there["ics_url"])
    # Back home, naming the therapist: checked as a new booking there.
    back = await client.post(
        path,
        json={
            "start": next_monday_at(11).isoformat(),
            "location_id": clinic["location"]["id"],
            "therapist_id": here,
        },
    )
    assert back.status_code == 200 and back.json()["therapist_id"] == here

    key = (
        await client.post(
            "/v1/api-keys",
            json={"name": "desk", "role": "front_desk", "location_ids": [clinic["location"]["id"]]},
        )
    ).json()["api_key"]
    desk = {"Authorization": f"Bearer {key}"}
    refused = await client.post(
        path,
        json={"start": next_monday_at(8).isoformat(), "location_id": uptown["id"]},
        headers=desk,
    )
    assert refused.status_code in (403, 404)
