"""The client's page over real HTTP (SQLite and PostgreSQL): what it shows, each action, and
hostile input: tampered or expired links, other sites, slots in the past, double submits."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import update

from services.booking import db
from services.booking.app import create_app
from shared import events
from tests.integration.test_booking_api import (
    make_clinic,
    next_monday_at,
    session_body,
    settings_for,
)
from tests.support import AUTH, EventTap, serve, wait_ready
from tools.kit.events import publish, reply_event

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def booked(database_url: str, nats_url: str) -> AsyncIterator[dict[str, Any]]:
    """A clinic (one room, one therapist), a session next Monday 10:00 and its page's path."""
    app = create_app(settings_for(database_url, nats_url))
    async with serve(app) as base_url:
        await wait_ready(base_url)
        async with (
            httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=30) as api,
            httpx.AsyncClient(base_url=base_url, timeout=30) as browser,
        ):
            clinic = await make_clinic(api)
            created = await api.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
            assert created.status_code == 201, created.text
            session = (await api.get(f"/v1/sessions/{created.json()['id']}")).json()
            assert session["manage_url"] == created.json()["manage_url"]
            path = "/" + session["manage_url"].split("://", 1)[1].split("/", 1)[1]
            yield {
                "api": api,
                "browser": browser,
                "app": app,
                "clinic": clinic,
                "session": session,
                "path": path,
                "base_url": base_url,
            }


def form_token(page: str) -> str:
    match = re.search(r'name="form_token" value="([^"]+)"', page)
    assert match, "no form token on the page"
    return match.group(1)


async def current(ctx: dict[str, Any]) -> dict[str, Any]:
    return dict((await ctx["api"].get(f"/v1/sessions/{ctx['session']['id']}")).json())


async def test_the_page_shows_the_appointment_without_health_details(booked: Any) -> None:
    page = await booked["browser"].get(booked["path"])
    assert page.status_code == 200
    text = page.text
    local = next_monday_at(10).astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    for expected in (
        "Maria",
        "10:00 AM",
        f"{local:%A}, {local:%B} {local.day}",
        "Downtown",
        "1 Main St",
        "Therapist 0",
        "Booked",
        ">Confirm<",
        ">Cancel appointment<",
        ">Reschedule<",
    ):
        assert expected in text, expected
    assert "Lopez" not in text and "massage" not in text.lower()
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "same-origin"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "late cancellation" not in text
    css = await booked["browser"].get("/m/static/manage.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


async def test_every_session_event_carries_the_clients_page(booked: Any, nats_url: str) -> None:
    """Booked through the API, confirmed by a texted C (the reply consumer): each event
    carries the same signed link the API shows, and the link opens that session."""
    api = booked["api"]
    async with EventTap(nats_url, "booking.session.*") as tap:
        created = await api.post(
            "/v1/sessions", json=session_body(booked["clinic"], next_monday_at(14))
        )
        assert created.status_code == 201, created.text
        session = created.json()
        link = session["manage_url"]
        assert link and "/m/" in link
        event = await tap.wait_for(
            lambda e: (
                e["type"] == "booking.session.booked" and e["data"]["session_id"] == session["id"]
            )
        )
        assert event["data"]["manage_url"] == link
        phone = booked["clinic"]["client"]["phone"]
        await publish(nats_url, reply_event(phone, "confirm", session_id=session["id"]))
        confirmed = await tap.wait_for(
            lambda e: (
                e["type"] == "booking.session.confirmed"
                and e["data"]["session_id"] == session["id"]
            )
        )
    assert confirmed["data"]["manage_url"] == link
    assert events.SessionEvent.model_validate(confirmed["data"]).manage_url == link
    page = await booked["browser"].get("/" + link.split("://", 1)[1].split("/", 1)[1])
    assert page.status_code == 200 and "2:00 PM" in page.text and "Confirmed" in page.text


async def test_confirm_then_a_double_submit_changes_nothing_twice(
    booked: Any, nats_url: str
) -> None:
    browser, path = booked["browser"], booked["path"]
    token = form_token((await browser.get(path)).text)
    async with EventTap(nats_url, "booking.session.confirmed") as tap:
        done = await browser.post(f"{path}/confirm", data={"form_token": token})
        assert done.status_code == 303 and done.headers["location"].endswith("?done=confirmed")
        await tap.wait_for(lambda e: e["data"]["session_id"] == booked["session"]["id"])
        again = await browser.post(f"{path}/confirm", data={"form_token": token})
        assert again.status_code == 409 and "nothing was changed" in again.text
    after = await current(booked)
    assert after["status"] == "confirmed" and after["version"] == 2
    shown = (await browser.get(done.headers["location"])).text
    assert "your appointment is confirmed" in shown and ">Confirm<" not in shown
    assert len([e for e in tap.events() if e["data"]["session_id"] == after["id"]]) == 1


async def test_reschedule_moves_it_and_a_time_taken_meanwhile_offers_others(
    booked: Any, nats_url: str
) -> None:
    browser, path, api = booked["browser"], booked["path"], booked["api"]
    times = await browser.get(f"{path}/reschedule")
    assert times.status_code == 200
    offered = re.findall(r'name="start" id="[^"]+" value="([^"]+)"', times.text)
    assert len(offered) > 10
    token = form_token(times.text)
    # Someone else takes the first offered time through the front desk meanwhile.
    clinic = booked["clinic"]
    taken = await api.post(
        "/v1/sessions",
        json={**session_body(clinic, next_monday_at(10)), "start": offered[0]},
    )
    assert taken.status_code == 201, taken.text
    refused = await browser.post(
        f"{path}/reschedule", data={"form_token": token, "start": offered[0]}
    )
    assert refused.status_code == 409 and "just taken" in refused.text
    assert offered[0] not in refused.text and ">Reschedule<" in refused.text
    assert (await current(booked))["version"] == 1

    fresh = form_token(refused.text)
    target = re.findall(r'name="start" id="[^"]+" value="([^"]+)"', refused.text)[-1]
    async with EventTap(nats_url, "booking.session.rescheduled") as tap:
        moved = await browser.post(
            f"{path}/reschedule", data={"form_token": fresh, "start": target}
        )
        assert moved.status_code == 303, moved.text
        event = await tap.wait_for(lambda e: e["data"]["session_id"] == booked["session"]["id"])
    assert event["data"]["start"].startswith(target[:16])
    after = await current(booked)
    assert after["start"][:16] == target[:16] and after["version"] == 2
    twice = await browser.post(
        f"{path}/reschedule", data={"form_token": fresh, "start": offered[-2]}
    )
    assert twice.status_code == 409 and (await current(booked))["version"] == 2
    # The link still opens after the move (it is bound to the session, not its time).
    assert "moved" in (await browser.get(moved.headers["location"])).text


async def test_a_slot_in_the_past_or_nonsense_is_refused_with_a_clear_message(booked: Any) -> None:
    browser, path = booked["browser"], booked["path"]
    token = form_token((await browser.get(f"{path}/reschedule")).text)
    past = (next_monday_at(10) - timedelta(days=30)).isoformat()
    refused = await browser.post(f"{path}/reschedule", data={"form_token": token, "start": past})
    assert refused.status_code == 422 and "can no longer be booked online" in refused.text
    junk = await browser.post(f"{path}/reschedule", data={"form_token": token, "start": "<script>"})
    assert junk.status_code == 422 and "<script>" not in junk.text
    assert (await current(booked))["version"] == 1


async def test_cancel_says_when_it_is_late_and_happens_once(booked: Any) -> None:
    browser, path, api = booked["browser"], booked["path"], booked["api"]
    location_id = booked["clinic"]["location"]["id"]
    await api.patch(f"/v1/locations/{location_id}", json={"late_cancel_hours": 24 * 14})
    page = (await browser.get(path)).text
    assert "late cancellation" in page and 'aria-describedby="late-note"' in page
    token = form_token(page)
    done = await browser.post(f"{path}/cancel", data={"form_token": token})
    assert done.status_code == 303
    again = await browser.post(f"{path}/cancel", data={"form_token": token})
    assert again.status_code == 409
    after = await current(booked)
    assert after["status"] == "cancelled" and after["late_cancel"] is True and after["version"] == 2
    shown = (await browser.get(path)).text
    assert "Cancelled" in shown and ">Cancel appointment<" not in shown and ">Confirm<" not in shown


async def test_hostile_requests_change_nothing(booked: Any) -> None:
    browser, path = booked["browser"], booked["path"]
    token = form_token((await browser.get(path)).text)
    tampered = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
    assert (await browser.get(tampered)).status_code == 404
    assert (
        await browser.post(f"{tampered}/confirm", data={"form_token": token})
    ).status_code == 404
    assert (await browser.get("/m/not-a-token")).status_code == 404
    # No state change on GET.
    assert (await browser.get(f"{path}/confirm")).status_code in (404, 405)
    # Another site posting the form.
    evil = await browser.post(
        f"{path}/confirm", data={"form_token": token}, headers={"Origin": "https://evil.example"}
    )
    assert evil.status_code == 403
    cross = await browser.post(
        f"{path}/confirm", data={"form_token": token}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert cross.status_code == 403
    forged = await browser.post(f"{path}/confirm", data={"form_token": "x.y"})
    assert forged.status_code == 403
    missing = await browser.post(f"{path}/confirm")
    assert missing.status_code == 403
    assert (await current(booked))["version"] == 1

    # A day after the session ended, the link no longer opens.
    app = booked["app"]
    past = next_monday_at(10) - timedelta(days=14)
    async with app.state.runtime.uow.sessions() as session, session.begin():
        await session.execute(
            update(db.Session)
            .where(db.Session.id == booked["session"]["id"])
            .values(
                start_at=past,
                end_at=past + timedelta(hours=1),
                blocked_until=past + timedelta(hours=1),
            )
        )
    expired = await browser.get(path)
    assert expired.status_code == 404 and "expired" in expired.text
    assert (await browser.post(f"{path}/cancel", data={"form_token": token})).status_code == 404
