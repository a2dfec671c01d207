"""The system as `make run` starts it, seen from a newcomer's chair: book a session, watch
the confirmation arrive on the Twilio sandbox's page, reply C there, see the answer, and
see booking mark the session confirmed.

The launcher (``python -m tools.run``) starts NATS, the Twilio sandbox, the services and
the seed, on free ports here.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.make_run_support import launch, stop
from tests.support import eventually

ADMIN = "e2e-admin-key"
CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    deadline = time.monotonic() + 120
    running = launch(
        tmp_path_factory.mktemp("var"),
        ADMIN,
        scrub=("TWILIO_", "SANDBOX_"),
        PYTHONUNBUFFERED="1",
    )
    try:
        urls = {server: running.url(server) for server in running.ports}
        while True:
            try:
                ready = httpx.get(f"{urls['reminders']}/readyz", timeout=1).json()
                sandbox_up = httpx.get(f"{urls['sandbox']}/_sandbox/health", timeout=1)
                if ready.get("role") == "active" and sandbox_up.status_code == 200:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert running.process.poll() is None, running.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "reminders or the sandbox did not come up"
            time.sleep(0.2)
        yield {**urls, "log": running.log}
    finally:
        stop(running.process)


def book_for_maria(booking: str) -> tuple[dict[str, Any], dict[str, Any]]:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=booking, headers=auth, timeout=30) as client:
        maria = next(c for c in client.get("/v1/clients").json() if c["first_name"] == "Maria")
        location = next(
            loc for loc in client.get("/v1/locations").json() if loc["name"] == "Riverside Clinic"
        )
        service = next(
            s for s in client.get("/v1/services").json() if s["name"] == "Medical massage 60"
        )
        start = datetime.now(UTC) + timedelta(days=2)
        slots = client.get(
            "/v1/availability",
            params={
                "service_id": service["id"],
                "location_id": location["id"],
                "start": start.isoformat(),
                "end": (start + timedelta(days=7)).isoformat(),
            },
        ).json()
        booked = client.post(
            "/v1/sessions",
            json={
                "client_id": maria["id"],
                "service_id": service["id"],
                "location_id": location["id"],
                "start": slots[len(slots) // 2]["start"],
            },
        )
        assert booked.status_code == 201, booked.text
        return maria, booked.json()


def session_status(booking: str, session_id: str) -> str:
    answer = httpx.get(
        f"{booking}/v1/sessions/{session_id}", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    return str(answer.json()["status"])


@pytest.mark.asyncio(loop_scope="session")
async def test_a_booking_is_texted_and_confirmed_by_reply(system: dict[str, Any]) -> None:
    maria, session = book_for_maria(system["booking"])
    phone = maria["phone"]

    async def confirmation() -> dict[str, Any] | None:
        async with httpx.AsyncClient() as client:
            threads = (await client.get(f"{system['sandbox']}/_sandbox/threads")).json()
        thread = next((t for t in threads["threads"] if t["phone"] == phone), None)
        sent = [m for m in (thread or {}).get("messages", []) if "you're booked" in m["body"]]
        return sent[-1] if sent and sent[-1]["status"] == "delivered" else None

    text = await eventually(confirmation, timeout=30, what="the confirmation on the sandbox")
    assert "Riverside Clinic" in text["body"] and "Hi Maria" in text["body"]
    assert "massage" not in text["body"].lower()

    async with httpx.AsyncClient() as client:
        answer = await client.post(
            f"{system['sandbox']}/_sandbox/phones/{phone}/reply", json={"body": "C"}
        )
    assert answer.json()["replies"][0]["body"].startswith("Thanks Maria, you're confirmed")

    async def confirmed() -> bool:
        return session_status(system["booking"], session["id"]) == "confirmed"

    await eventually(confirmed, timeout=30, what="booking to mark the session confirmed")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_reply_on_the_sandbox_page_and_see_the_answer(system: dict[str, Any]) -> None:
    from playwright.sync_api import expect, sync_playwright

    maria, session = book_for_maria(system["booking"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(system["sandbox"] + "/")
            page.locator(f'#phones button[data-phone="{maria["phone"]}"]').click()
            thread = page.locator("#thread")
            clinic = thread.locator(".msg.clinic")
            expect(clinic.filter(has_text="you're booked").last).to_be_visible(timeout=30_000)

            page.fill("#reply-text", "C")
            page.click("#send")

            expect(page.locator("#reply-result")).to_contain_text("webhook answered 200")
            expect(clinic.last.locator(".bubble")).to_contain_text(
                "Thanks Maria, you're confirmed", timeout=15_000
            )
        finally:
            browser.close()
    deadline = time.monotonic() + 30
    while session_status(system["booking"], session["id"]) != "confirmed":
        assert time.monotonic() < deadline, "booking did not mark the session confirmed"
        time.sleep(0.2)
