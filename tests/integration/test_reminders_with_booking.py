"""Reminders with the real booking service: a booking is confirmed by text, an opt-out
reaches the client record; and reminders due while the service was down."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from services.booking.app import create_app as create_booking
from services.reminders.app import create_app as create_reminders
from services.reminders.texts import gsm7_segments
from shared.natsd import free_port
from tests.integration.test_booking_api import make_clinic, next_monday_at, session_body
from tests.integration.test_booking_api import settings_for as booking_settings
from tests.reminders_support import (
    Booking,
    Sandbox,
    log_of,
    now,
    publish,
    running_sandbox,
    settings_for,
    wait_active,
    wait_log,
)
from tests.support import AUTH, eventually, serve, sqlite_url, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as running:
        yield running


async def test_booked_then_confirmed_by_text_then_opted_out(
    tmp_path: Any, nats_url: str, sandbox: Sandbox
) -> None:
    booking_app = create_booking(booking_settings(sqlite_url(tmp_path, "booking"), nats_url))
    port = free_port()
    reminders_app = create_reminders(
        settings_for(sqlite_url(tmp_path, "reminders"), nats_url, sandbox.url, port)
    )
    async with (
        serve(booking_app) as booking_url,
        serve(reminders_app, port) as reminders_url,
    ):
        sandbox.point_inbound_at(reminders_url)
        await wait_ready(booking_url)
        await wait_active(reminders_app)
        async with httpx.AsyncClient(base_url=booking_url, headers=AUTH, timeout=30) as front:
            clinic = await make_clinic(front)
            phone = clinic["client"]["phone"]
            start = next_monday_at(10)
            booked = await front.post(
                "/v1/sessions", json=session_body(clinic, start), headers={"Idempotency-Key": "k1"}
            )
            assert booked.status_code == 201, booked.text
            session_id = booked.json()["id"]

            [text] = await sandbox.wait_for(phone, 1, status="delivered")
            assert "Hi Maria" in text["body"] and "at 10:00 AM at Downtown" in text["body"]
            assert "(212) 555-0100" in text["body"], "the location's phone"

            answer = await sandbox.reply(phone, "C")
            assert answer["replies"][0]["body"].startswith("Thanks Maria, you're confirmed")

            async def confirmed() -> bool:
                session = (await front.get(f"/v1/sessions/{session_id}")).json()
                return bool(session["status"] == "confirmed")

            await eventually(confirmed, what="booking to mark the session confirmed")

            await sandbox.reply(phone, "STOP")

            async def opted_out() -> bool:
                client = (await front.get(f"/v1/clients/{clinic['client']['id']}")).json()
                return client["sms_consent"] is False

            await eventually(opted_out, what="booking to record the opt-out")

            # The client's record now says no consent: a cancellation is not texted.
            cancelled = await front.post(f"/v1/sessions/{session_id}/cancel", json={"reason": "x"})
            assert cancelled.status_code == 200
            async with httpx.AsyncClient(base_url=reminders_url, headers=AUTH) as reminders:
                rows = await wait_log(
                    reminders,
                    lambda rows: any(r["rule"] == "cancellation" for r in rows),
                    session_id=session_id,
                )
            cancellation = next(r for r in rows if r["rule"] == "cancellation")
            assert cancellation["status"] == "skipped"
            assert cancellation["reason"] in {"opted_out", "no_consent"}
            assert len(await sandbox.to(phone)) == 1


async def test_reminders_due_while_down_are_sent_on_restart_when_still_useful(
    sqlite_database_url: str, nats_url: str, sandbox: Sandbox
) -> None:
    rules = {
        "defaults": {
            "rules": [
                {"name": "confirmation", "kind": "confirmation", "offset_minutes": 0},
                {"name": "reminder_1h", "kind": "reminder", "offset_minutes": -60},
            ],
            "quiet_hours": {"start": "00:00", "end": "24:00"},
        }
    }
    useful = Booking(start=now() + timedelta(minutes=60, seconds=3))
    reminder_due = useful.start - timedelta(minutes=60)

    async def run_once() -> Any:
        port = free_port()
        app = create_reminders(settings_for(sqlite_database_url, nats_url, sandbox.url, port))
        return app, port

    app, port = await run_once()
    async with serve(app, port) as url:
        sandbox.point_inbound_at(url)
        await wait_active(app)
        async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
            assert (await http.put("/v1/rules", json=rules)).status_code == 200
            await publish(nats_url, useful.booked())
            await sandbox.wait_for(useful.phone, 1)
            await wait_log(http, lambda rows: rows, session_id=useful.session_id)

    # Down. Booked meanwhile: a session so close that its confirmation would be too late.
    pointless = Booking(start=now() + timedelta(seconds=2))
    await publish(nats_url, pointless.booked())

    async def passed() -> bool:
        return now() > max(reminder_due, pointless.start) + timedelta(seconds=1)

    await eventually(passed, what="the reminder's time to pass while the service is down")

    app, port = await run_once()
    async with serve(app, port) as url:
        sandbox.point_inbound_at(url)
        await wait_active(app)
        messages = await sandbox.wait_for(useful.phone, 2)
        assert messages[-1]["body"].startswith("Reminder: Maria") or messages[0]["body"].startswith(
            "Reminder: Maria"
        )
        async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
            [row] = await wait_log(http, lambda rows: rows, session_id=pointless.session_id)
            assert row["status"] == "skipped" and row["reason"] in {"missed", "too_late"}
            assert len(await log_of(http, session_id=useful.session_id)) == 2
    assert await sandbox.to(pointless.phone) == []


async def test_the_confirmation_carries_the_clients_page_and_r_answers_with_it(
    tmp_path: Any, nats_url: str, sandbox: Sandbox
) -> None:
    await sandbox.reset()
    booking_app = create_booking(booking_settings(sqlite_url(tmp_path, "booking"), nats_url))
    port = free_port()
    reminders_app = create_reminders(
        settings_for(sqlite_url(tmp_path, "reminders"), nats_url, sandbox.url, port)
    )
    async with (
        serve(booking_app) as booking_url,
        serve(reminders_app, port) as reminders_url,
    ):
        sandbox.point_inbound_at(reminders_url)
        await wait_ready(booking_url)
        await wait_active(reminders_app)
        async with httpx.AsyncClient(base_url=booking_url, headers=AUTH, timeout=30) as front:
            clinic = await make_clinic(front)
            phone = clinic["client"]["phone"]
            booked = await front.post("/v1/sessions", json=session_body(clinic, next_monday_at(11)))
            assert booked.status_code == 201, booked.text
            session = (await front.get(f"/v1/sessions/{booked.json()['id']}")).json()
            link = session["manage_url"]
            assert link

            [text] = await sandbox.wait_for(phone, 1, status="delivered")
            body = text["body"]
            assert f"See or change it: {link} " in body, body
            assert "Hi Maria" in body and "(212) 555-0100" in body
            assert gsm7_segments(body) == 2, "GSM-7, two segments at most"
            assert "massage" not in body.lower()

            answer = await sandbox.reply(phone, "R")
            [reply] = answer["replies"]
            assert link in reply["body"], reply["body"]
            assert "(212) 555-0100" in reply["body"]

            # The link the text carried opens the client's page of that session.
            # (booking's public address is not where this test serves it: same path here.)
            path = "/" + link.split("://", 1)[1].split("/", 1)[1]
            async with httpx.AsyncClient(base_url=booking_url, timeout=30) as browser:
                page = await browser.get(path)
            assert page.status_code == 200
            assert "Maria" in page.text and "Downtown" in page.text
