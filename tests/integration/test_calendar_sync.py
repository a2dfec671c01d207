"""Calendar sync against a real CalDAV server (Radicale), a real nats-server and real HTTP.

Sessions go from booking's own events (durable consumer ``booking-caldav``) into linked
calendars; busy time comes back from a therapist's own calendar and removes slots.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import icalendar
import pytest
import pytest_asyncio
from sqlalchemy import select
from structlog.testing import capture_logs

from services.booking import db
from services.booking.app import create_app
from shared.natsd import free_port
from tests.calendar_support import PASSWORD, Radicale, by_uid, vcalendar
from tests.integration.test_booking_api import (
    NY,
    make_clinic,
    next_monday_at,
    session_body,
    settings_for,
)
from tests.support import AUTH, eventually, serve, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: Short intervals: the push worker polls often, retries fast, pulls and reconciles often.
FAST = {
    "calendar_push_poll_seconds": 0.1,
    "calendar_retry_base_seconds": 0.05,
    "calendar_retry_max_seconds": 0.4,
    "calendar_failure_threshold": 2,
    "calendar_pull_interval_seconds": 0.3,
    "calendar_reconcile_interval_seconds": 0.5,
    "calendar_http_timeout_seconds": 3,
}


@pytest.fixture
def radicale(tmp_path: Path) -> Any:
    server = Radicale(tmp_path / "radicale").start()
    yield server
    server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def booking(database_url: str, nats_url: str, radicale: Radicale) -> AsyncIterator[Any]:
    await radicale.ready()
    app = create_app(settings_for(database_url, nats_url, **FAST))
    async with serve(app) as base_url:
        await wait_ready(base_url)
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=30) as client:
            yield client, app


async def new_calendar(radicale: Radicale, user: str, name: str) -> str:
    return await asyncio.to_thread(radicale.make_calendar, user, name)


async def events_in(radicale: Radicale, calendar_url: str, user: str) -> list[icalendar.Event]:
    return await asyncio.to_thread(radicale.vevents, calendar_url, user)


async def link(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/calendar-links", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def push_link(
    client: httpx.AsyncClient, owner_type: str, owner_id: str, url: str, user: str
) -> dict[str, Any]:
    return await link(
        client,
        owner_type=owner_type,
        owner_id=owner_id,
        direction="push",
        kind="caldav",
        url=url,
        username=user,
        password=PASSWORD,
    )


async def the_event(
    radicale: Radicale, calendar_url: str, user: str, session_id: str, **expect: str
) -> icalendar.Event:
    """Wait until the calendar holds the session's event with the ``expect``ed properties."""

    async def matching() -> icalendar.Event | None:
        found = by_uid(await events_in(radicale, calendar_url, user)).get(
            f"{session_id}@booking.clinic-backbone", []
        )
        if len(found) != 1:
            return None
        event = found[0]
        for name, value in expect.items():
            if str(event.get(name)) != value:
                return None
        return event

    return await eventually(matching, timeout=15, what=f"event {session_id} with {expect}")


async def test_a_session_is_written_moved_and_cancelled_in_linked_calendars(
    booking: Any, radicale: Radicale
) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    therapist = clinic["therapists"][0]
    own = await new_calendar(radicale, "ana", "work")
    front = await new_calendar(radicale, "desk", "downtown")
    therapist_link = await push_link(client, "therapist", therapist["id"], own, "ana")
    assert "password" not in therapist_link and therapist_link["has_password"] is True
    await push_link(client, "location", clinic["location"]["id"], front, "desk")

    async def checked() -> dict[str, Any] | None:
        row = (await client.get(f"/v1/calendar-links/{therapist_link['id']}")).json()
        return row if row["status"] == "ok" else None

    # Linking tries the calendar at once: GET tells whether URL and credentials work.
    await eventually(checked, what="the new link to be checked against the calendar")

    session = (
        await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
    ).json()
    booked = await the_event(radicale, own, "ana", session["id"], SEQUENCE="0")
    start = booked["DTSTART"]
    assert start.params["TZID"] == "America/New_York"
    assert start.dt.replace(tzinfo=None) == next_monday_at(10).astimezone(NY).replace(tzinfo=None)
    assert str(booked["SUMMARY"]) == "Medical massage 60: Maria L."  # first name, last initial
    assert str(booked["LOCATION"]) == "Room 0, Downtown"
    assert str(booked["STATUS"]) == "CONFIRMED"
    await the_event(radicale, front, "desk", session["id"], SEQUENCE="0")

    moved = await client.post(
        f"/v1/sessions/{session['id']}/reschedule", json={"start": next_monday_at(13).isoformat()}
    )
    assert moved.status_code == 200, moved.text
    rescheduled = await the_event(radicale, own, "ana", session["id"], SEQUENCE="1")
    assert rescheduled["UID"] == booked["UID"]
    assert rescheduled["DTSTART"].dt.astimezone(UTC) == next_monday_at(13)
    assert rescheduled["DTEND"].dt.astimezone(UTC) == next_monday_at(14)

    await client.post(f"/v1/sessions/{session['id']}/cancel", json={"reason": "flu"})
    cancelled = await the_event(
        radicale, own, "ana", session["id"], SEQUENCE="2", STATUS="CANCELLED"
    )
    assert "flu" not in cancelled.to_ical().decode()
    await the_event(radicale, front, "desk", session["id"], SEQUENCE="2", STATUS="CANCELLED")
    assert len(await events_in(radicale, own, "ana")) == 1

    async def synced() -> dict[str, Any] | None:
        row = (await client.get(f"/v1/calendar-links/{therapist_link['id']}")).json()
        return row if row["pending_pushes"] == 0 and row["status"] == "ok" else None

    shown = await eventually(synced, what="the link to show it is in sync")
    assert shown["last_synced_at"] is not None and shown["consecutive_failures"] == 0


async def test_a_session_given_to_another_therapist_leaves_the_first_ones_calendar(
    booking: Any, radicale: Radicale
) -> None:
    client, _app = booking
    clinic = await make_clinic(client, rooms=1, therapists=2)
    first, second = clinic["therapists"]
    first_cal = await new_calendar(radicale, "first", "work")
    second_cal = await new_calendar(radicale, "second", "work")
    await push_link(client, "therapist", first["id"], first_cal, "first")
    await push_link(client, "therapist", second["id"], second_cal, "second")
    session = (
        await client.post(
            "/v1/sessions",
            json=session_body(clinic, next_monday_at(10), therapist_id=first["id"]),
        )
    ).json()
    await the_event(radicale, first_cal, "first", session["id"])
    moved = await client.post(
        f"/v1/sessions/{session['id']}/reschedule",
        json={"start": next_monday_at(11).isoformat(), "therapist_id": second["id"]},
    )
    assert moved.status_code == 200, moved.text
    await the_event(radicale, second_cal, "second", session["id"], SEQUENCE="1")

    async def gone() -> bool:
        return not await events_in(radicale, first_cal, "first")

    await eventually(gone, what="the event to leave the first therapist's calendar")


async def test_existing_sessions_are_written_when_a_calendar_is_linked(
    booking: Any, radicale: Radicale
) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    sessions = [
        (await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(h)))).json()
        for h in (9, 11, 13)
    ]
    calendar = await new_calendar(radicale, "late", "work")
    await push_link(client, "therapist", clinic["therapists"][0]["id"], calendar, "late")
    for session in sessions:
        await the_event(radicale, calendar, "late", session["id"])


def _starts(slots: list[dict[str, Any]]) -> set[datetime]:
    return {datetime.fromisoformat(s["start"]).astimezone(UTC) for s in slots}


@pytest.mark.parametrize("kind", ["caldav", "ics"])
async def test_busy_time_in_the_therapists_own_calendar_removes_slots(
    booking: Any, radicale: Radicale, kind: str
) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    therapist = clinic["therapists"][0]
    monday = next_monday_at(0).astimezone(NY).date()
    day = monday.strftime("%Y%m%d")
    sunday = (monday - timedelta(days=1)).strftime("%Y%m%d")
    tuesday = (monday + timedelta(days=1)).strftime("%Y%m%d")
    wednesday = (monday + timedelta(days=2)).strftime("%Y%m%d")
    own = await new_calendar(radicale, "ana", "private")
    stamp = "DTSTAMP:20260101T000000Z"
    dentist_href = await asyncio.to_thread(
        radicale.add,
        own,
        "ana",
        vcalendar(
            f"UID:dentist\n{stamp}\nSUMMARY:Dentist\n"
            f"DTSTART;TZID=America/New_York:{day}T100000\n"
            f"DTEND;TZID=America/New_York:{day}T110000"
        ),
    )
    for body in (
        # every day 12:00-12:30 from Sunday on, recurring
        f"UID:lunch\n{stamp}\nSUMMARY:Lunch\nRRULE:FREQ=DAILY;COUNT=10\n"
        f"DTSTART;TZID=America/New_York:{sunday}T120000\n"
        f"DTEND;TZID=America/New_York:{sunday}T123000",
        # all of Tuesday, an all-day event
        f"UID:course\n{stamp}\nSUMMARY:Course\nDTSTART;VALUE=DATE:{tuesday}\n"
        f"DTEND;VALUE=DATE:{wednesday}",
        # shown as free, and cancelled: neither blocks anything
        f"UID:free\n{stamp}\nTRANSP:TRANSPARENT\n"
        f"DTSTART;TZID=America/New_York:{day}T140000\n"
        f"DTEND;TZID=America/New_York:{day}T150000",
        f"UID:off\n{stamp}\nSTATUS:CANCELLED\n"
        f"DTSTART;TZID=America/New_York:{day}T150000\n"
        f"DTEND;TZID=America/New_York:{day}T160000",
        # one of ours (a session we wrote there): the session itself blocks, not this copy
        f"UID:{uuid.uuid4()}@booking.clinic-backbone\n{stamp}\n"
        f"DTSTART;TZID=America/New_York:{day}T160000\n"
        f"DTEND;TZID=America/New_York:{day}T170000",
    ):
        await asyncio.to_thread(radicale.add, own, "ana", vcalendar(body))

    params = {
        "service_id": clinic["service"]["id"],
        "location_id": clinic["location"]["id"],
        "start": next_monday_at(0).isoformat(),
        "end": (next_monday_at(0) + timedelta(days=3)).isoformat(),
    }
    before = _starts((await client.get("/v1/availability", params=params)).json())
    assert next_monday_at(9) in before and next_monday_at(10) in before

    # The same collection serves both kinds: a Radicale calendar answers GET with its ICS.
    created = await link(
        client,
        owner_type="therapist",
        owner_id=therapist["id"],
        direction="pull",
        kind=kind,
        url=own,
        username="ana",
        password=PASSWORD,
    )
    assert created["timezone"] == "America/New_York"

    async def blocked() -> set[datetime] | None:
        free = _starts((await client.get("/v1/availability", params=params)).json())
        return free if next_monday_at(10) not in free else None

    free = await eventually(blocked, what="the dentist appointment to block 10:00")
    # 09:00 + 60 min + 15 min buffer runs into the dentist; 11:xx runs into lunch.
    for hour, minute in ((9, 0), (10, 30), (11, 0), (11, 30), (12, 0)):
        assert next_monday_at(hour, minute) not in free, f"{hour}:{minute:02d} should be busy"
    for hour in (12, 14, 15, 16):
        minute = 30 if hour == 12 else 0
        assert next_monday_at(hour, minute) in free, f"{hour}:{minute:02d} should be free"
    tuesday_start = next_monday_at(0) + timedelta(days=1)
    assert not [s for s in free if tuesday_start <= s < tuesday_start + timedelta(days=1)]
    wednesday_noon = next_monday_at(12) + timedelta(days=2)
    assert wednesday_noon not in free and wednesday_noon + timedelta(minutes=30) in free

    refused = await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
    assert refused.status_code == 409, refused.text

    # The appointment is deleted in the therapist's calendar: the next pull frees 10:00.
    await asyncio.to_thread(radicale.delete, dentist_href, "ana")

    async def freed() -> bool:
        free = _starts((await client.get("/v1/availability", params=params)).json())
        return next_monday_at(10) in free

    await eventually(freed, what="10:00 to be free again")
    shown = (await client.get(f"/v1/calendar-links/{created['id']}")).json()
    assert shown["status"] == "ok" and shown["busy_spans"] >= 1


async def test_a_calendar_that_was_down_catches_up_with_nothing_lost_or_doubled(
    booking: Any, radicale: Radicale
) -> None:
    client, _app = booking
    clinic = await make_clinic(client, rooms=3, therapists=1)
    calendar = await new_calendar(radicale, "ana", "work")
    created = await push_link(client, "therapist", clinic["therapists"][0]["id"], calendar, "ana")
    first = (await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(9)))).json()
    await the_event(radicale, calendar, "ana", first["id"])

    radicale.stop()
    later = [
        (await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(h)))).json()
        for h in (11, 13, 15)
    ]
    await client.post(
        f"/v1/sessions/{later[0]['id']}/reschedule",
        json={"start": next_monday_at(11, 30).isoformat()},
    )
    await client.post(f"/v1/sessions/{later[1]['id']}/cancel", json={"reason": "moving"})
    await client.post(f"/v1/sessions/{first['id']}/cancel", json={"reason": "ill"})

    async def failing() -> dict[str, Any] | None:
        row = (await client.get(f"/v1/calendar-links/{created['id']}")).json()
        # all four changed sessions wait: the three new ones and the cancelled first one
        return row if row["status"] == "failing" and row["pending_pushes"] == 4 else None

    shown = await eventually(failing, what="the link to be reported failing")
    assert shown["consecutive_failures"] >= 2 and shown["last_error"]

    radicale.start()
    await radicale.ready()
    await the_event(radicale, calendar, "ana", first["id"], SEQUENCE="1", STATUS="CANCELLED")
    await the_event(radicale, calendar, "ana", later[0]["id"], SEQUENCE="1", STATUS="CONFIRMED")
    await the_event(radicale, calendar, "ana", later[1]["id"], SEQUENCE="1", STATUS="CANCELLED")
    await the_event(radicale, calendar, "ana", later[2]["id"], SEQUENCE="0", STATUS="CONFIRMED")
    moved = await the_event(radicale, calendar, "ana", later[0]["id"])
    assert moved["DTSTART"].dt.astimezone(UTC) == next_monday_at(11, 30)
    uids = by_uid(await events_in(radicale, calendar, "ana"))
    assert len(uids) == 4 and all(len(copies) == 1 for copies in uids.values())

    async def recovered() -> dict[str, Any] | None:
        row = (await client.get(f"/v1/calendar-links/{created['id']}")).json()
        return row if row["status"] == "ok" and row["pending_pushes"] == 0 else None

    healthy = await eventually(recovered, what="the link to recover")
    assert healthy["consecutive_failures"] == 0 and healthy["last_error"]  # kept, with its time


async def test_one_failing_calendar_does_not_hold_up_the_others(
    booking: Any, radicale: Radicale
) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    therapist = clinic["therapists"][0]
    good = await new_calendar(radicale, "ana", "work")
    nowhere = f"http://127.0.0.1:{free_port()}/ana/work/"
    with capture_logs() as logs:
        broken = await push_link(client, "therapist", therapist["id"], nowhere, "ana")
        await push_link(client, "location", clinic["location"]["id"], good, "ana")
        sessions = [
            (await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(h)))).json()
            for h in (9, 11, 13)
        ]
        for session in sessions:
            await the_event(radicale, good, "ana", session["id"])

        async def failing() -> dict[str, Any] | None:
            row = (await client.get(f"/v1/calendar-links/{broken['id']}")).json()
            return row if row["status"] == "failing" else None

        shown = await eventually(failing, what="the broken link to be reported")
    assert shown["last_error"] == "cannot connect to the calendar server (connection refused)"
    assert shown["pending_pushes"] == 3
    reported = [e for e in logs if e["event"] == "calendar_link.failing"]
    assert reported and reported[0]["link_id"] == broken["id"]
    assert PASSWORD not in repr(logs)


async def test_reconcile_puts_back_a_deleted_event_and_removes_a_stale_one(
    booking: Any, radicale: Radicale
) -> None:
    client, _app = booking
    clinic = await make_clinic(client)
    calendar = await new_calendar(radicale, "ana", "work")
    await push_link(client, "therapist", clinic["therapists"][0]["id"], calendar, "ana")
    kept, deleted = [
        (await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(h)))).json()
        for h in (9, 11)
    ]
    await the_event(radicale, calendar, "ana", kept["id"])
    await the_event(radicale, calendar, "ana", deleted["id"])
    hrefs = {
        href: text for href, text in await asyncio.to_thread(radicale.resources, calendar, "ana")
    }
    gone_href = next(h for h, text in hrefs.items() if deleted["id"] in text)
    await asyncio.to_thread(radicale.delete, gone_href, "ana")  # by hand, in the calendar app
    stale_id = str(uuid.uuid4())
    day = next_monday_at(0).astimezone(NY).strftime("%Y%m%d")
    await asyncio.to_thread(
        radicale.add,
        calendar,
        "ana",
        vcalendar(
            f"UID:{stale_id}@booking.clinic-backbone\nDTSTAMP:20260101T000000Z\n"
            f"DTSTART;TZID=America/New_York:{day}T150000\n"
            f"DTEND;TZID=America/New_York:{day}T160000\nSUMMARY:left over"
        ),
    )
    foreign = "UID:therapists-own-thing\nDTSTAMP:20260101T000000Z\n"
    foreign += (
        f"DTSTART;TZID=America/New_York:{day}T180000\nDTEND;TZID=America/New_York:{day}T190000"
    )
    await asyncio.to_thread(radicale.add, calendar, "ana", vcalendar(foreign))

    async def repaired() -> bool:
        uids = by_uid(await events_in(radicale, calendar, "ana"))
        return (
            f"{deleted['id']}@booking.clinic-backbone" in uids
            and f"{stale_id}@booking.clinic-backbone" not in uids
        )

    await eventually(repaired, timeout=15, what="the reconcile job to repair the calendar")
    uids = by_uid(await events_in(radicale, calendar, "ana"))
    assert f"{kept['id']}@booking.clinic-backbone" in uids
    assert "therapists-own-thing" in uids  # not ours: left alone


async def test_calendar_links_are_admin_only_validated_and_keep_the_password_secret(
    booking: Any,
) -> None:
    client, app = booking
    clinic = await make_clinic(client)
    therapist_id = clinic["therapists"][0]["id"]
    body = {
        "owner_type": "therapist",
        "owner_id": therapist_id,
        "direction": "push",
        "kind": "caldav",
        "url": "https://dav.example.com/cal/ana/",
        "username": "ana",
        "password": "s3cret-calendar-password",
    }
    created = await link(client, **body)
    listed = await client.get("/v1/calendar-links")
    assert "s3cret-calendar-password" not in listed.text
    assert [r["id"] for r in listed.json()] == [created["id"]]
    async with app.state.runtime.uow.sessions() as session:
        stored = await session.scalar(
            select(db.CalendarLink.password_encrypted).where(db.CalendarLink.id == created["id"])
        )
    assert stored and "s3cret" not in stored
    assert app.state.runtime.calendar.box.decrypt(stored) == "s3cret-calendar-password"

    assert (await client.post("/v1/calendar-links", json=body)).status_code == 409
    for change, field in (
        (
            {"direction": "pull", "owner_type": "location", "owner_id": clinic["location"]["id"]},
            "owner_type",
        ),
        ({"kind": "ics"}, "kind"),
        ({"url": "https://ana:pw@dav.example.com/cal/"}, "url"),
        ({"url": "ftp://dav.example.com/cal/"}, "url"),
        ({"owner_id": str(uuid.uuid4())}, "owner_id"),
        ({"username": None}, "username"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
    ):
        answer = await client.post("/v1/calendar-links", json={**body, **change})
        assert answer.status_code == 422, (change, answer.text)
        assert field in answer.text, (change, answer.text)

    desk = (
        await client.post(
            "/v1/api-keys",
            json={"name": "desk", "role": "front_desk", "location_ids": [clinic["location"]["id"]]},
        )
    ).json()["api_key"]
    as_desk = {"Authorization": f"Bearer {desk}"}
    assert (await client.get("/v1/calendar-links", headers=as_desk)).status_code == 403
    assert (await client.post("/v1/calendar-links", json=body, headers=as_desk)).status_code == 403

    assert (await client.delete(f"/v1/calendar-links/{created['id']}")).status_code == 204
    assert (await client.get(f"/v1/calendar-links/{created['id']}")).status_code == 404
    assert (await client.delete(f"/v1/calendar-links/{created['id']}")).status_code == 404
