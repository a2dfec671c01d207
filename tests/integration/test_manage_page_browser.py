"""The client's page in headless Chromium at phone size (390×844): open the link, confirm,
reschedule, cancel; the session and its events agree; axe-core finds nothing serious."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from services.booking.app import create_app
from tests.integration.test_booking_api import (
    make_clinic,
    next_monday_at,
    session_body,
    settings_for,
)
from tests.support import AUTH, EventTap, eventually, serve, wait_ready

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
async def booked(sqlite_database_url: str, nats_url: str) -> AsyncIterator[dict[str, Any]]:
    app = create_app(settings_for(sqlite_database_url, nats_url))
    async with serve(app) as base_url:
        await wait_ready(base_url)
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=30) as api:
            clinic = await make_clinic(api)
            created = await api.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
            session = (await api.get(f"/v1/sessions/{created.json()['id']}")).json()
            path = "/" + session["manage_url"].split("://", 1)[1].split("/", 1)[1]
            yield {"api": api, "session": session, "url": base_url + path}


async def serious_violations(page: Any) -> list[str]:
    from axe_playwright_python.async_playwright import Axe

    results = await Axe().run(page)
    return [
        f"{v['id']}: {v['help']}"
        for v in results.response["violations"]
        if v.get("impact") in {"serious", "critical"}
    ]


async def test_confirm_reschedule_and_cancel_from_a_phone(booked: Any, nats_url: str) -> None:
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
