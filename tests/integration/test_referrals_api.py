"""Referrals over real HTTP with a real nats-server, on SQLite and on PostgreSQL: the partner
webhook, the partner API, the lifecycle with its events, plan progress from booking's events,
the FHIR views."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task

from services.referrals import signing
from shared import events
from tests.keys_support import grant_key, key_answers
from tests.referrals_support import (
    as_partner,
    client_event,
    known_client,
    make_partner,
    make_plan,
    post_ok,
    publish,
    referral_body,
    running_referrals,
    session_event,
    webhook_receiver,
)
from tests.support import EventTap, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _client_known(client: httpx.AsyncClient, nats_url: str) -> str:
    """A client booking announced, as referrals knows it once the event is applied."""
    client_id = str(uuid.uuid4())
    await publish(nats_url, client_event(client_id))
    await eventually(lambda: known_client(client, client_id), what="the client event applied")
    return client_id


async def test_a_partner_webhook_gets_a_signed_fhir_bundle_once_after_a_500(
    database_url: str, nats_url: str
) -> None:
    async with (
        webhook_receiver(answers=[500]) as receiver,
        running_referrals(database_url, nats_url) as (client, _app),
    ):
        partner = await make_partner(client, webhook_url=receiver.url)
        receiver.secret = partner["webhook_secret"]
        client_id = await _client_known(client, nats_url)
        plan = await make_plan(client, client_id)

        async with EventTap(nats_url, "referrals.referral.>") as tap:
            created = await post_ok(client, "/v1/referrals", referral_body(plan, partner))
            assert created["status"] == "sent" and created["task_status"] == "requested"

            async def received() -> bool:
                row = (await client.get(f"/v1/referrals/{created['id']}")).json()
                return bool(row["task_status"] == "received")

            await eventually(received, what="the webhook's 2xx to mark the referral received")
            sent = await tap.wait_for(
                lambda e: (
                    e["type"] == "referrals.referral.sent"
                    and e["data"]["referral_id"] == created["id"]
                )
            )
            await tap.wait_for(lambda e: e["type"] == "referrals.referral.received")
        statuses = [e["data"]["status"] for e in tap.events() if e["subject"] == created["id"]]
        assert statuses == ["created", "sent", "received"]
        assert sent["data"]["partner"] == {"id": partner["id"], "discipline": "physical_therapy"}

        # The first attempt got a 500, the second a 200: the partner has it exactly once.
        assert [r.status_answered for r in receiver.received] == [500, 200]
        assert all(r.verified for r in receiver.received), [r.error for r in receiver.received]
        assert len(receiver.accepted("requested")) == 1
        delivered = receiver.accepted()[0]
        assert delivered.bundle is not None and delivered.bundle.type == "collection"
        kinds = [e.resource.get_resource_type() for e in delivered.bundle.entry or []]
        assert kinds == ["ServiceRequest", "Task", "Patient"]
        assert delivered.headers["x-referral-delivery"] == delivered.bundle.id
        patient = delivered.resource("Patient")
        assert set(patient) == {"resourceType", "id", "name", "telecom", "birthDate"}
        assert patient["telecom"][0]["value"] == "+12125550199"
        request = delivered.resource("ServiceRequest")
        assert {c["coding"][0]["code"] for c in request["reasonCode"]} == {"M54.50", "M62.830"}
        assert request["priority"] == "routine" and request["status"] == "active"

        row = (await client.get(f"/v1/referrals/{created['id']}")).json()
        assert row["status"] == "received" and row["task_status"] == "received"
        assert [(d["kind"], d["status"], d["attempts"]) for d in row["deliveries"]] == [
            ("requested", "delivered", 2)
        ]


async def test_a_signature_replayed_after_five_minutes_is_refused() -> None:
    body = b'{"resourceType":"Bundle"}'
    header = signing.sign("whsec_x", body, timestamp=int(datetime.now(UTC).timestamp()) - 301)
    with pytest.raises(signing.InvalidSignature, match="replay"):
        signing.verify("whsec_x", header, body)


async def test_partner_a_cannot_see_or_touch_partner_b_referral(
    database_url: str, nats_url: str
) -> None:
    async with running_referrals(database_url, nats_url) as (client, _app):
        a = await make_partner(client, name="A Physio")
        b = await make_partner(client, name="B Physio")
        client_id = await _client_known(client, nats_url)
        plan = await make_plan(client, client_id)
        for_b = await post_ok(client, "/v1/referrals", referral_body(plan, b))

        async with as_partner(client, a["api_key"]) as partner_a:
            assert (await partner_a.get("/v1/partner/referrals")).json() == []
            for path in (
                f"/v1/partner/referrals/{for_b['id']}",
                f"/fhir/R4/ServiceRequest/{for_b['id']}",
                f"/fhir/R4/Task/{for_b['id']}",
                f"/fhir/R4/Patient/{client_id}",
            ):
                assert (await partner_a.get(path)).status_code == 404, path
            answer = await partner_a.post(f"/v1/partner/referrals/{for_b['id']}/accept")
            assert answer.status_code == 404
            # A partner key is no clinic key.
            assert (await partner_a.get(f"/v1/referrals/{for_b['id']}")).status_code == 403
            assert (await partner_a.get("/v1/partners")).status_code == 403

        async with as_partner(client, b["api_key"]) as partner_b:
            mine = (await partner_b.get("/v1/partner/referrals")).json()
            assert [r["id"] for r in mine] == [for_b["id"]]
            assert mine[0]["patient"]["last_name"] == "Lopez"
            assert (await partner_b.get(f"/fhir/R4/Patient/{client_id}")).status_code == 200
        # b read it: received. a's attempt changed nothing.
        row = (await client.get(f"/v1/referrals/{for_b['id']}")).json()
        assert row["task_status"] == "received"


async def test_lifecycle_to_completed_while_the_plan_follows_booking_sessions(
    database_url: str, nats_url: str
) -> None:
    async with running_referrals(database_url, nats_url) as (client, _app):
        partner = await make_partner(client)
        acupuncturist = await make_partner(client, discipline="acupuncture")
        client_id = await _client_known(client, nats_url)
        plan = await make_plan(client, client_id, massage_sessions=1)
        referral = await post_ok(client, "/v1/referrals", referral_body(plan, partner))
        acu = await post_ok(
            client,
            "/v1/referrals",
            referral_body(plan, acupuncturist, diagnosis_codes=["M79.18"], urgency="urgent"),
        )
        base = f"/v1/partner/referrals/{referral['id']}"
        first_visit = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)

        async with (
            EventTap(nats_url, "referrals.>") as tap,
            as_partner(client, partner["api_key"]) as pt,
        ):
            # Completing before scheduling is not a move the Task allows.
            too_soon = await pt.post(f"{base}/complete", json={"summary": "done"})
            assert too_soon.status_code == 409, too_soon.text

            accepted = await post_ok(pt, f"{base}/accept", {"note": "we can see her next week"})
            assert accepted["task_status"] == "accepted"
            assert (await pt.post(f"{base}/decline", json={"reason": "x"})).status_code == 409
            scheduled = await post_ok(
                pt, f"{base}/schedule", {"start": first_visit.isoformat(), "note": "Room 2"}
            )
            assert scheduled["task_status"] == "in-progress"
            assert scheduled["business_status"] == "scheduled"
            await post_ok(pt, f"{base}/notes", {"text": "good progress", "sessions_completed": 3})

            # Meanwhile the client has her massage session at the clinic.
            await publish(nats_url, session_event(client_id, events.SESSION_COMPLETED))
            await tap.wait_for(
                lambda e: (
                    e["type"] == events.PLAN_UPDATED
                    and e["data"]["progress"]["components"][0]["completed"] == 1
                )
            )

            pdf = base64.b64encode(b"%PDF-1.4\n% outcome\n").decode()
            done = await post_ok(
                pt,
                f"{base}/complete",
                {
                    "summary": "Pain 3/10, full range",
                    "sessions_completed": 6,
                    "report_pdf_base64": pdf,
                },
            )
            assert done["task_status"] == "completed"
            assert done["report"]["sessions_completed"] == 6

            async with as_partner(client, acupuncturist["api_key"]) as ac:
                a = f"/v1/partner/referrals/{acu['id']}"
                await post_ok(ac, f"{a}/accept", {})
                await post_ok(ac, f"{a}/schedule", {"start": first_visit.isoformat()})
                await post_ok(ac, f"{a}/no-show", {"note": "client did not come"})
                await post_ok(ac, f"{a}/complete", {"summary": "4 sessions, sleep better"})

            completed_plan = await tap.wait_for(lambda e: e["type"] == events.PLAN_COMPLETED)

        lifecycle = [
            e["data"]["status"]
            for e in tap.events()
            if e["type"].startswith("referrals.referral.") and e["subject"] == referral["id"]
        ]
        assert lifecycle == ["accepted", "scheduled", "completed"]
        scheduled_event = next(
            e for e in tap.events() if e["type"] == "referrals.referral.scheduled"
        )
        assert scheduled_event["data"]["client_id"] == client_id
        assert scheduled_event["data"]["client"]["first_name"] == "Maria"
        assert datetime.fromisoformat(scheduled_event["data"]["first_visit_at"]) == first_visit
        assert completed_plan["data"]["progress"]["completed"] is True

        plan_now = (await client.get(f"/v1/plans/{plan['id']}")).json()
        assert plan_now["status"] == "completed"
        by_discipline = {c["discipline"]: c for c in plan_now["components"]}
        assert by_discipline["massage"]["completed"] == 1
        assert by_discipline["physical_therapy"]["completed"] == 6
        assert by_discipline["acupuncture"]["done"] is True

        row = (await client.get(f"/v1/referrals/{referral['id']}")).json()
        assert [h["action"] for h in row["history"]] == [
            "create",
            "issue",
            "accept",
            "schedule",
            "interim-note",
            "complete",
        ]
        pdf_answer = await client.get(f"/v1/referrals/{referral['id']}/report.pdf")
        assert pdf_answer.content.startswith(b"%PDF-")


async def test_the_fhir_views_validate_as_r4(database_url: str, nats_url: str) -> None:
    async with running_referrals(database_url, nats_url) as (client, _app):
        partner = await make_partner(client)
        client_id = await _client_known(client, nats_url)
        plan = await make_plan(client, client_id)
        referral = await post_ok(client, "/v1/referrals", referral_body(plan, partner))
        async with as_partner(client, partner["api_key"]) as pt:
            base = f"/v1/partner/referrals/{referral['id']}"
            await post_ok(pt, f"{base}/accept", {})
            start = datetime.now(UTC) + timedelta(days=2)
            await post_ok(pt, f"{base}/schedule", {"start": start.isoformat()})
            for caller in (client, pt):
                answer = await caller.get(f"/fhir/R4/ServiceRequest/{referral['id']}")
                assert answer.headers["content-type"].startswith("application/fhir+json")
                request = ServiceRequest.model_validate_json(answer.content)
                assert request.id == referral["id"] and request.status == "active"
                assert request.subject.reference == f"Patient/{client_id}"
                assert request.occurrenceTiming.repeat.count == 6

                task = Task.model_validate_json(
                    (await caller.get(f"/fhir/R4/Task/{referral['id']}")).content
                )
                assert task.status == "in-progress"
                assert task.businessStatus.text == "scheduled"
                assert task.focus.reference == f"ServiceRequest/{referral['id']}"

                patient = Patient.model_validate_json(
                    (await caller.get(f"/fhir/R4/Patient/{client_id}")).content
                )
                assert patient.birthDate.isoformat() == "1980-02-03"
        missing = await client.get(f"/fhir/R4/Task/{uuid.uuid4()}")
        assert missing.status_code == 404


async def test_bad_referrals_are_refused_with_the_field_named(
    database_url: str, nats_url: str
) -> None:
    async with running_referrals(database_url, nats_url) as (client, _app):
        partner = await make_partner(client)
        chiro = await make_partner(client, discipline="chiropractic")
        plan = await make_plan(client, str(uuid.uuid4()))

        no_consent = await client.post(
            "/v1/referrals", json=referral_body(plan, partner, consent_to_share=False)
        )
        assert no_consent.status_code == 422
        assert no_consent.json()["detail"][0]["loc"][-1] == "consent_to_share"
        missing = referral_body(plan, partner)
        del missing["consent_to_share"]
        assert (await client.post("/v1/referrals", json=missing)).status_code == 422

        deleted = await client.post(
            "/v1/referrals", json=referral_body(plan, partner, diagnosis_codes=["M54.5"])
        )
        assert deleted.status_code == 422
        assert deleted.json()["field"] == "diagnosis_codes"
        for code in ("M54.50", "M54.51", "M54.59"):
            assert code in deleted.json()["detail"]

        wrong = await client.post("/v1/referrals", json=referral_body(plan, chiro))
        assert wrong.status_code == 422 and wrong.json()["field"] == "partner_id"
        unknown = await client.post(
            "/v1/referrals", json={**referral_body(plan, partner), "plan_id": "nope"}
        )
        assert unknown.status_code == 422 and unknown.json()["field"] == "plan_id"

        first = await client.post("/v1/referrals", json=referral_body(plan, partner))
        assert first.status_code == 201
        # The client is unknown to referrals: the referral waits as a draft.
        assert first.json()["task_status"] == "draft"
        again = await client.post("/v1/referrals", json=referral_body(plan, partner))
        assert again.status_code == 409

        bad_partner = await client.post(
            "/v1/partners",
            json={"name": "X", "discipline": "massage", "phone": "1", "email": "x@example.com"},
        )
        assert bad_partner.status_code == 422


async def test_a_draft_waits_for_the_client_event_then_is_sent(
    database_url: str, nats_url: str
) -> None:
    async with running_referrals(database_url, nats_url) as (client, _app):
        partner = await make_partner(client)
        client_id = str(uuid.uuid4())
        plan = await make_plan(client, client_id)
        draft = await post_ok(client, "/v1/referrals", referral_body(plan, partner))
        assert draft["task_status"] == "draft"
        assert draft["business_status"] == "awaiting-client-details"
        async with as_partner(client, partner["api_key"]) as pt:
            assert (await pt.get("/v1/partner/referrals")).json() == []

            async with EventTap(nats_url, "referrals.referral.sent") as tap:
                event = client_event(client_id)
                await publish(nats_url, event)
                await publish(nats_url, event)  # redelivered by booking: applied once
                sent = await tap.wait_for(lambda e: e["data"]["referral_id"] == draft["id"])
            assert sent["data"]["client"]["phone"] == "+12125550199"
            mine = (await pt.get("/v1/partner/referrals")).json()
            assert [(r["id"], r["patient"]["first_name"]) for r in mine] == [(draft["id"], "Maria")]
        row = (await client.get(f"/v1/referrals/{draft['id']}")).json()
        assert [h["action"] for h in row["history"]] == ["create", "issue", "receive"]


async def test_a_webhook_failing_for_the_whole_window_fails_the_referral(
    database_url: str, nats_url: str
) -> None:
    async with (
        webhook_receiver(answers=[503] * 1000) as receiver,
        running_referrals(database_url, nats_url, referrals_webhook_retry_hours=1.5 / 3600) as (
            client,
            _app,
        ),
    ):
        partner = await make_partner(client, webhook_url=receiver.url)
        receiver.secret = partner["webhook_secret"]
        client_id = await _client_known(client, nats_url)
        plan = await make_plan(client, client_id)
        referral = await post_ok(client, "/v1/referrals", referral_body(plan, partner))

        async def failed() -> dict[str, Any] | None:
            row = (await client.get(f"/v1/referrals/{referral['id']}")).json()
            return row if row["task_status"] == "failed" else None

        row = await eventually(failed, what="the referral to fail after its retry window")
        assert "503" in row["status_reason"]
        assert row["business_status"] == "delivery-failed"
        delivery = row["deliveries"][0]
        assert delivery["status"] == "failed" and delivery["attempts"] >= 3
        assert len(receiver.received) == delivery["attempts"]
        assert all(r.verified for r in receiver.received)


async def test_unanswered_referral_is_reminded_then_expires(
    database_url: str, nats_url: str
) -> None:
    second = 1 / 3600
    async with (
        webhook_receiver() as receiver,
        running_referrals(
            database_url,
            nats_url,
            referrals_accept_hours=1 * second,
            referrals_expire_after_hours=1 * second,
        ) as (client, app),
    ):
        partner = await make_partner(client, webhook_url=receiver.url)
        receiver.secret = partner["webhook_secret"]
        api_partner = await make_partner(client, discipline="acupuncture")  # no webhook
        client_id = await _client_known(client, nats_url)
        plan = await make_plan(client, client_id)
        async with EventTap(nats_url, "referrals.referral.expired") as tap:
            referral = await post_ok(client, "/v1/referrals", referral_body(plan, partner))
            polled = await post_ok(
                client,
                "/v1/referrals",
                referral_body(plan, api_partner, diagnosis_codes=["G44.209"]),
            )
            expired = await tap.wait_for(lambda e: e["data"]["referral_id"] == referral["id"])
            await tap.wait_for(lambda e: e["data"]["referral_id"] == polled["id"])
        assert expired["data"]["task_status"] == "cancelled"
        assert expired["data"]["business_status"] == "expired"

        reminders = receiver.accepted("reminder")
        assert len(reminders) == 1
        assert reminders[0].resource("Task")["businessStatus"]["text"] == "reminder-sent"
        await eventually(
            lambda: _async_value(bool(receiver.accepted("expired"))),
            what="the partner told of the expiry",
        )
        assert receiver.accepted("expired")[0].resource("Task")["status"] == "cancelled"

        row = (await client.get(f"/v1/referrals/{polled['id']}")).json()
        assert row["reminded_at"] is not None  # recorded for the partner without a webhook
        assert [h["action"] for h in row["history"]] == ["create", "issue", "remind", "expire"]
        deadlines = app.state.runtime.deadlines
        assert deadlines.active
        assert f"{referral['id']}:accept-reminder" in deadlines.fired
        assert f"{referral['id']}:expire" in deadlines.fired


async def _async_value(value: Any) -> Any:
    return value


async def test_the_clinic_cancels_and_the_partner_is_told(database_url: str, nats_url: str) -> None:
    async with (
        webhook_receiver() as receiver,
        running_referrals(database_url, nats_url) as (client, _app),
    ):
        partner = await make_partner(client, webhook_url=receiver.url)
        receiver.secret = partner["webhook_secret"]
        client_id = await _client_known(client, nats_url)
        plan = await make_plan(client, client_id)
        referral = await post_ok(client, "/v1/referrals", referral_body(plan, partner))
        await eventually(
            lambda: _async_value(bool(receiver.accepted("requested"))), what="the referral sent"
        )
        async with EventTap(nats_url, "referrals.referral.cancelled") as tap:
            cancelled = await post_ok(
                client, f"/v1/referrals/{referral['id']}/cancel", {"reason": "client moved away"}
            )
            event = await tap.wait_for(lambda e: e["data"]["referral_id"] == referral["id"])
        assert cancelled["task_status"] == "cancelled"
        assert event["data"]["status_reason"] == "client moved away"
        await eventually(
            lambda: _async_value(bool(receiver.accepted("cancelled"))), what="the partner told"
        )
        told = receiver.accepted("cancelled")[0]
        assert told.resource("Task")["status"] == "cancelled"
        assert told.resource("ServiceRequest")["status"] == "revoked"
        again = await client.post(f"/v1/referrals/{referral['id']}/cancel", json={"reason": "x"})
        assert again.status_code == 409
        # Cancelled, the partner and discipline are free for a new referral in this plan.
        assert (
            await client.post("/v1/referrals", json=referral_body(plan, partner))
        ).status_code == 201


async def test_keys_have_roles(database_url: str, nats_url: str) -> None:
    async with running_referrals(database_url, nats_url) as (client, _app):
        # Clinic keys come from booking (booking.apikey.issued): a Riverside front desk.
        _, desk_key = await grant_key(nats_url, "front_desk", ["riverside"])
        await key_answers(str(client.base_url), desk_key, "/v1/plans", 200)
        partner = await make_partner(client, discipline="acupuncture")
        listed = (await client.get("/v1/partners", params={"discipline": "acupuncture"})).json()
        assert [p["id"] for p in listed] == [partner["id"]]
        assert "api_key" not in listed[0] and "webhook_secret" not in listed[0]
        async with as_partner(client, desk_key) as desk:
            plan = await make_plan(desk, str(uuid.uuid4()))
            assert plan["status"] == "active" and plan["location_id"] == "riverside"
            # Partners are the admin's.
            assert (await desk.get("/v1/partners")).status_code == 403
            refused = await desk.post(
                "/v1/partners",
                json={
                    "name": "X",
                    "discipline": "other",
                    "phone": "+12125550100",
                    "email": "x@y.io",
                },
            )
            assert refused.status_code == 403
        async with as_partner(client, partner["api_key"]) as own:
            assert (await own.get(f"/v1/partners/{partner['id']}")).status_code == 200
            plan_body = {
                "client_id": "c1",
                "goals": "g",
                "components": [{"discipline": "massage", "sessions": 1, "per_week": 1}],
            }
            assert (await own.post("/v1/plans", json=plan_body)).status_code == 403
        anonymous = await client.get("/v1/referrals", headers={"Authorization": ""})
        assert anonymous.status_code == 401
