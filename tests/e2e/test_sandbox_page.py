"""The sandbox's phone page in headless Chromium: see a message, reply as the phone, see the
app's TwiML answer appear in the thread."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Response

from tools.twilio_sandbox import SandboxSettings, create_app, sandbox_client, serve_in_thread

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"
)

PHONE = "+15552220001"
CONFIRMED = "Thanks, you're confirmed"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def inbound_app() -> FastAPI:
    """Stands in for the reminders service's inbound webhook: it confirms every reply."""
    app = FastAPI()

    @app.post("/twilio/inbound")
    async def inbound() -> Response:
        twiml = f"<Response><Message>{CONFIRMED}</Message></Response>"
        return Response(twiml, media_type="application/xml")

    return app


@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str]:
    with serve_in_thread(inbound_app()) as inbound_url:
        settings = SandboxSettings(inbound_url=inbound_url + "/twilio/inbound", step_delay_ms=20)
        with serve_in_thread(create_app(settings)) as url:
            yield url


def test_reply_from_the_phone_page(sandbox_url: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    settings = SandboxSettings()
    client = sandbox_client(sandbox_url, settings.account_sid, settings.auth_token)
    client.messages.create(
        to=PHONE, from_=settings.from_number, body="Reminder: massage tomorrow 10:00. Reply C"
    )

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(sandbox_url + "/")
            page.locator(f'#phones button[data-phone="{PHONE}"]').click()
            thread = page.locator("#thread")
            clinic = thread.locator(".msg.clinic")
            expect(clinic.first).to_contain_text("Reminder: massage tomorrow")
            expect(clinic.first.locator(".status")).to_have_text("delivered")

            page.fill("#reply-text", "C")
            page.click("#send")

            expect(thread.locator(".msg.phone .bubble")).to_have_text(["C"])
            expect(clinic.last.locator(".bubble")).to_have_text(CONFIRMED)
            expect(page.locator("#reply-result")).to_contain_text("webhook answered 200")
            expect(page.locator("#reply-text")).to_have_value("")
        finally:
            browser.close()
