"""The client's page in headless Chromium at phone size (390×844), opened from the link in
the text the Twilio sandbox received: confirm, reschedule, cancel; the session, its events
and the texts that follow agree; axe-core finds nothing serious."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio

from services.booking.app import create_app as create_booking
from services.reminders.app import create_app as create_reminders
from services.reminders.texts import local_when
from shared.natsd import free_port
from tests.integration.test_booking_api import make_clinic, next_monday_at, session_body
from tests.integration.test_booking_api import settings_for as booking_settings
from tests.reminders_support import running_sandbox, settings_for, wait_active
from tests.support import AUTH, EventTap, eventually, serve, sqlite_url, wait_ready

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"
    ),
]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest_asyncio.fixture(loop_scope="session")
async def booked(tmp_path: Path, nats_url: str) -> AsyncIterator[dict[str, Any]]:
    """Booking, reminders and the Twilio sandbox; one session booked through the API, and
    the link to its page as the client's phone received it."""
    booking_port, reminders_port = free_port(), free_port()
    booking_app = create_booking(
        booking_settings(
            sqlite_url(tmp_path, "booking"),
            nats_url,
            booking_port=booking_port,
            public_base_url=f"http://127.0.0.1:{booking_port}",
        )
    )
    with running_sandbox() as sandbox:
        reminders_app = create_reminders(
            settings_for(sqlite_url(tmp_path, "reminders"), nats_url, sandbox.url, reminders_port)
        )
        async with (
            serve(booking_app, booking_port) as booking_url,
            serve(reminders_app, reminders_port),
        ):
            await wait_ready(booking_url)
            await wait_active(reminders_app)
            async with httpx.AsyncClient(base_url=booking_url, headers=AUTH, timeout=30) as api:
                clinic = await make_clinic(api)
                created = await api.post(
                    "/v1/sessions", json=session_body(clinic, next_monday_at(10))
                )
                assert created.status_code == 201, created.text
                phone = clinic["client"]["phone"]
                [text] = await sandbox.wait_for(phone, 1)
                link = next(word for word in text["body"].split() if "/m/" in word)
                yield {
                    "api": api,
                    "session": created.json(),
                    "url": link,
                    "phone": phone,
                    "zone": ZoneInfo(clinic["location"]["timezone"]),
                    "sandbox": sandbox,
                }


async def serious_violations(page: Any) -> list[str]:
    from axe_playwright_python.async_playwright import Axe

    results = await Axe().run(page)
    return [
        f"{v['id']}: {v['help']}"
        for v in results.response["violations"]
        if v.get("impact") in {"serious", "critical"}
    ]


async def test_confirm_reschedule_and_cancel_from_the_texted_link(
    booked: Any, nats_url: str
) -> None:
    from playwright.async_api import async_playwright, expect

    # A loaded machine (two cores, several test runs) can be slow to render 14 days of times.
    expect.set_options(timeout=20_000)
    session_id = booked["session"]["id"]
    async with EventTap(nats_url, "booking.session.*") as tap, async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 390, "height": 844})
            await page.goto(booked["url"])
            await expect(page.get_by_role("heading", name="Your appointment")).to_be_visible()
            await expect(page.get_by_text("Hi Maria")).to_be_visible()
            assert await page.evaluate("document.documentElement.scrollWidth") <= 390
            assert await serious_violations(page) == []

            await page.get_by_role("button", name="Confirm").click()
            await expect(page.get_by_role("status")).to_contain_text("confirmed")
            await expect(page.get_by_role("button", name="Confirm")).to_have_count(0)

            await page.get_by_role("button", name="Reschedule").click()
            await expect(page.get_by_role("heading", name="Choose a new time")).to_be_visible()
            assert await serious_violations(page) == []
            assert await page.evaluate("document.documentElement.scrollWidth") <= 390
            choice = page.get_by_role("radio").nth(3)
            new_start = await choice.get_attribute("value")
            await choice.check()
            await page.get_by_role("button", name="Reschedule").click()
            await expect(page.get_by_role("status")).to_contain_text("moved")

            await page.get_by_role("button", name="Cancel appointment").click()
            await expect(page.get_by_role("status")).to_contain_text("cancelled")
            await expect(page.get_by_role("button", name="Cancel appointment")).to_have_count(0)
            assert await serious_violations(page) == []
        finally:
            await browser.close()

        after = (await booked["api"].get(f"/v1/sessions/{session_id}")).json()
        assert after["status"] == "cancelled" and after["version"] == 4
        assert new_start is not None and after["start"][:16] == new_start[:16]

        async def all_three() -> list[str] | None:
            kinds = [e["type"] for e in tap.events() if e["data"]["session_id"] == session_id]
            wanted = [
                "booking.session.confirmed",
                "booking.session.rescheduled",
                "booking.session.cancelled",
            ]
            return kinds if kinds == wanted else None

        await eventually(all_three, what="confirmed, rescheduled and cancelled events")

    # The texts that followed name the new time: "moved to ...", then "... is cancelled".
    when = local_when(datetime.fromisoformat(new_start), booked["zone"])
    texts = await booked["sandbox"].wait_for(booked["phone"], 3)
    moved, cancelled = texts[1]["body"], texts[2]["body"]
    assert "moved to" in moved and when in moved, moved
    assert "cancelled" in cancelled and when in cancelled, cancelled
