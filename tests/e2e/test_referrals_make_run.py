"""Referrals in the system `make run` starts: seeded partners and plan, booking's client data
arriving by events, and a massage session completed at booking moving the care plan.

Skipped until ``tools.commands.SERVICE_COMMANDS`` starts referrals."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.make_run_support import launch, stop
from tests.support import EventTap, eventually
from tools.commands import SERVICE_COMMANDS

ADMIN = "e2e-referrals-make-run-key"

pytestmark = pytest.mark.skipif(
    "referrals" not in SERVICE_COMMANDS, reason="make run does not start referrals yet"
)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    var = tmp_path_factory.mktemp("var")
    running = launch(var, ADMIN, scrub=("REFERRALS_", "APP_ENV"), timeout=120)
    try:
        yield {
            "booking": running.url("booking"),
            "referrals": running.url("referrals"),
            "nats": running.admin_nats_url,
            "log": running.log,
        }
    finally:
        stop(running.process)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_session_completed_at_booking_moves_the_seeded_care_plan(
    system: dict[str, Any],
) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with (
        httpx.AsyncClient(base_url=system["booking"], headers=auth, timeout=30) as booking,
        httpx.AsyncClient(base_url=system["referrals"], headers=auth, timeout=30) as referrals,
    ):
        partners = (await referrals.get("/v1/partners")).json()
        assert sorted(p["discipline"] for p in partners) == ["acupuncture", "physical_therapy"]
        plans = (await referrals.get("/v1/plans")).json()
        assert len(plans) == 1
        plan = plans[0]
        client_id = plan["client_id"]
        assert client_id in {c["id"] for c in (await booking.get("/v1/clients")).json()}

        async def known() -> bool:
            return (await referrals.get(f"/v1/clients/{client_id}")).status_code == 200

        await eventually(known, timeout=30, what="booking's client event at referrals")
        physio = next(p for p in partners if p["discipline"] == "physical_therapy")
        referral = await referrals.post(
            "/v1/referrals",
            json={
                "plan_id": plan["id"],
                "partner_id": physio["id"],
                "reason": "Low back pain; core strengthening",
                "diagnosis_codes": ["M54.50"],
                "urgency": "routine",
                "consent_to_share": True,
            },
        )
        assert referral.status_code == 201, referral.text
        assert referral.json()["task_status"] == "requested"

        location = (await booking.get("/v1/locations")).json()[0]
        service = next(
            s
            for s in (await booking.get("/v1/services")).json()
            if s["modality"] == "medical_massage"
        )
        start = datetime.now(UTC) + timedelta(days=2)
        slots = (
            await booking.get(
                "/v1/availability",
                params={
                    "service_id": service["id"],
                    "location_id": location["id"],
                    "start": start.isoformat(),
                    "end": (start + timedelta(days=7)).isoformat(),
                },
            )
        ).json()
        booked = await booking.post(
            "/v1/sessions",
            json={
                "client_id": client_id,
                "service_id": service["id"],
                "location_id": location["id"],
                "start": slots[0]["start"],
            },
        )
        assert booked.status_code == 201, booked.text
        session_id = booked.json()["id"]
        async with EventTap(system["nats"], "referrals.plan.updated") as tap:
            assert (await booking.post(f"/v1/sessions/{session_id}/check-in")).status_code == 200
            assert (await booking.post(f"/v1/sessions/{session_id}/complete")).status_code == 200
            updated = await tap.wait_for(lambda e: e["data"]["plan_id"] == plan["id"], timeout=30)
        massage = next(
            c for c in updated["data"]["progress"]["components"] if c["discipline"] == "massage"
        )
        assert massage["completed"] == 1
        now = (await referrals.get(f"/v1/plans/{plan['id']}")).json()
        assert next(c for c in now["components"] if c["discipline"] == "massage")["completed"] == 1
