"""Issue 11 across the services, as a clinic and its clients live it: booking, reminders,
referrals and the Twilio sandbox, real NATS, texts read and answered at the sandbox's phones.

- A cancelled session is offered by text to the client waiting for it; they reply BOOK and
  are booked (the confirmation follows).
- A completed session is followed by a check-in question; the client's ``7`` lands in their
  plan's outcomes at referrals and in a FHIR R4 Observation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fhir.resources.R4B.bundle import Bundle

from services.booking.app import create_app as create_booking
from services.reminders.app import create_app as create_reminders
from shared.natsd import free_port
from tests.booking_support import make_clinic
from tests.integration.test_booking_api import next_monday_at, session_body
from tests.integration.test_booking_api import settings_for as booking_settings
from tests.referrals_support import known_client, make_plan, running_referrals
from tests.reminders_support import Sandbox, running_sandbox, settings_for, wait_active
from tests.support import AUTH, eventually, serve, sqlite_url, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="session")

ANA_PHONE = "+12125550142"


@dataclass
class Clinic:
    front: httpx.AsyncClient
    reminders: httpx.AsyncClient
    referrals: httpx.AsyncClient
    sandbox: Sandbox
    clinic: dict[str, Any]


@pytest_asyncio.fixture(loop_scope="session")
async def clinic(tmp_path: Path, nats_url: str) -> AsyncIterator[Clinic]:
    booking_app = create_booking(booking_settings(sqlite_url(tmp_path, "booking"), nats_url))
    port = free_port()
    with running_sandbox() as sandbox:
        await sandbox.reset()
        reminders_app = create_reminders(
            settings_for(sqlite_url(tmp_path, "reminders"), nats_url, sandbox.url, port)
        )
        async with (
            serve(booking_app) as booking_url,
            serve(reminders_app, port) as reminders_url,
            running_referrals(sqlite_url(tmp_path, "referrals"), nats_url) as (referrals, _),
            httpx.AsyncClient(base_url=booking_url, headers=AUTH, timeout=30) as front,
            httpx.AsyncClient(base_url=reminders_url, headers=AUTH, timeout=30) as reminders,
        ):
            sandbox.point_inbound_at(reminders_url)
            await wait_ready(booking_url)
            await wait_active(reminders_app)
            yield Clinic(front, reminders, referrals, sandbox, await make_clinic(front))


async def test_a_freed_slot_is_offered_by_text_and_booked_with_book(clinic: Clinic) -> None:
    front, sandbox, c = clinic.front, clinic.sandbox, clinic.clinic
    start = next_monday_at(14)
    taken = await front.post("/v1/sessions", json=session_body(c, start))
    assert taken.status_code == 201, taken.text

    ana = await front.post(
        "/v1/clients",
        json={
            "first_name": "Ana",
            "last_name": "Ruiz",
            "phone": ANA_PHONE,
            "sms_consent": True,
            "language": "es",
        },
    )
    assert ana.status_code == 201, ana.text
    day = start.date()
    entry = await front.post(
        "/v1/waitlist",
        json={
            "client_id": ana.json()["id"],
            "service_id": c["service"]["id"],
            "location_id": c["location"]["id"],
            "earliest": (day - timedelta(days=1)).isoformat(),
            "latest": (day + timedelta(days=1)).isoformat(),
        },
    )
    assert entry.status_code == 201, entry.text

    cancelled = await front.post(
        f"/v1/sessions/{taken.json()['id']}/cancel", json={"reason": "client_request"}
    )
    assert cancelled.status_code == 200, cancelled.text

    [offer] = await sandbox.wait_for(ANA_PHONE, 1)
    assert "BOOK" in offer["body"], offer["body"]
    assert offer["body"].startswith("Hola Ana"), "in Ana's language"
    assert "lunes" in offer["body"], "the day, in Spanish (a Monday)"

    await sandbox.reply(ANA_PHONE, "BOOK")

    async def booked_for_ana() -> list[dict[str, Any]] | None:
        page = await front.get("/v1/sessions", params={"location_id": c["location"]["id"]})
        mine = [
            s for s in page.json() if s["client_id"] == ana.json()["id"] and s["status"] == "booked"
        ]
        return mine or None

    [session] = await eventually(booked_for_ana, timeout=20, what="Ana's session from BOOK")
    assert session["start"][:16] == start.isoformat()[:16]
    texts = await sandbox.wait_for(ANA_PHONE, 2)
    assert session["manage_url"] in texts[-1]["body"], "the confirmation of the new session"
    assert texts[-1]["body"].startswith("Hola Ana")

    # Maria, who cancelled, heard about her cancellation and nothing about Ana.
    maria = await sandbox.to(c["client"]["phone"])
    assert all("Ana" not in m["body"] for m in maria)


async def test_a_checkin_answer_reaches_the_plan_and_fhir(clinic: Clinic) -> None:
    front, sandbox, c = clinic.front, clinic.sandbox, clinic.clinic
    maria = c["client"]
    await eventually(lambda: known_client(clinic.referrals, maria["id"]), what="referrals")
    plan = await make_plan(clinic.referrals, maria["id"])

    # Check-ins at once after completion, so the test need not wait a day.
    rules = (await clinic.reminders.get("/v1/rules")).json()
    checkin = [r for r in rules["defaults"]["rules"] if r["kind"] == "checkin"]
    assert checkin and checkin[0]["enabled"], "the check-in rule is on by default"
    for rule in rules["defaults"]["rules"]:
        if rule["kind"] == "checkin":
            rule["offset_minutes"] = 0
    rules["defaults"]["quiet_hours"] = {"start": "00:00", "end": "24:00"}
    answer = await clinic.reminders.put("/v1/rules", json=rules)
    assert answer.status_code == 200, answer.text

    booked = await front.post("/v1/sessions", json=session_body(c, next_monday_at(9)))
    sid = booked.json()["id"]
    await front.post(f"/v1/sessions/{sid}/check-in")
    done = await front.post(f"/v1/sessions/{sid}/complete")
    assert done.json()["status"] == "completed", done.text

    async def question() -> dict[str, Any] | None:
        texts = await sandbox.to(maria["phone"])
        return next((t for t in texts if "how do you feel" in t["body"].lower()), None)

    asked = await eventually(question, timeout=20, what="the check-in question")
    assert "pain" not in asked["body"].lower()
    answer = await sandbox.reply(maria["phone"], "7")
    assert "7" in answer["replies"][0]["body"], "the client hears the answer was noted"

    async def scored() -> list[dict[str, Any]] | None:
        got = (await clinic.referrals.get(f"/v1/plans/{plan['id']}")).json()
        return got.get("outcomes") or None

    [outcome] = await eventually(scored, timeout=20, what="the score in the plan")
    assert outcome["score"] == 7 and outcome["session_id"] == sid

    bundle = await clinic.referrals.get("/fhir/R4/Observation", params={"patient": maria["id"]})
    assert bundle.status_code == 200, bundle.text
    parsed = Bundle.model_validate(bundle.json())
    [entry] = parsed.entry or []
    observation = entry.resource
    assert observation.valueInteger == 7
    assert observation.code.coding[0].code == "72514-3"
