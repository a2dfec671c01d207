"""Check-in answers from reminders (``reminders.outcome.recorded`` on a real nats-server) in
referrals, on SQLite and on PostgreSQL: the plan's outcomes and trend, once per session, as
FHIR R4 Observations (search, read, the partner's webhook Bundle), scoped like plans; a
malformed event is dead-lettered."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation

from shared import events
from tests.integration.test_delivery import dlq_messages, publish_event
from tests.keys_support import grant_key, key_answers
from tests.referrals_support import (
    Received,
    WebhookReceiver,
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
from tests.support import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

LOINC_PAIN = "72514-3"


def outcome_event(
    client_id: str, session_id: str, score: int, answered_at: datetime | None = None
) -> events.CloudEvent[Any]:
    """A check-in answer as reminders publishes it."""
    data = events.OutcomeRecorded(
        client_id=client_id,
        session_id=session_id,
        score=score,
        answered_at=answered_at or datetime.now(UTC),
    )
    return events.make_event(events.OUTCOME_RECORDED, "reminders", data, subject=session_id)


async def _client_known(client: httpx.AsyncClient, nats_url: str) -> str:
    client_id = str(uuid.uuid4())
    await publish(nats_url, client_event(client_id))
    await eventually(lambda: known_client(client, client_id), what="the client event applied")
    return client_id


async def _plan_with(
    client: httpx.AsyncClient, plan_id: str, count: int, headers: dict[str, str] | None = None
) -> dict[str, Any] | None:
    plan = (await client.get(f"/v1/plans/{plan_id}", headers=headers)).json()
    return plan if len(plan["outcomes"]) >= count else None


def webhooks(receiver: WebhookReceiver, kind: str) -> Callable[[], Awaitable[list[Received]]]:
    """``eventually``'s check: the webhooks of ``kind`` the partner accepted so far."""

    async def accepted() -> list[Received]:
        return receiver.accepted(kind)

    return accepted


async def _observations(
    http: httpx.AsyncClient, patient: str, headers: dict[str, str] | None = None
) -> Bundle:
    answer = await http.get("/fhir/R4/Observation", params={"patient": patient}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+json")
    return Bundle.model_validate_json(answer.content)


async def test_a_score_lands_in_the_plan_with_the_trend_once_and_as_an_r4_observation(
    database_url: str, nats_url: str
) -> None:
    async with running_referrals(database_url, nats_url) as (client, _app):
        client_id = await _client_known(client, nats_url)
        plan = await make_plan(client, client_id)  # baseline 7
        assert plan["outcomes"] == []
        assert plan["outcome_summary"] == {
            "baseline_pain_score": 7,
            "latest": None,
            "change_from_baseline": None,
            "count": 0,
        }
        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        answered = datetime.now(UTC)
        event = outcome_event(client_id, first, 5, answered)
        await publish(nats_url, event)
        # Replayed: the same envelope past JetStream's dedupe, and the same answer under a
        # new event id (with another score): the first answer stands, recorded once.
        await publish(nats_url, event, msg_id=str(uuid.uuid4()))
        await publish(nats_url, outcome_event(client_id, first, 9, answered))
        await publish(nats_url, outcome_event(client_id, second, 3, answered + timedelta(days=7)))

        seen = await eventually(
            lambda: _plan_with(client, plan["id"], 2), what="both scores on the plan"
        )
        assert [(o["session_id"], o["score"]) for o in seen["outcomes"]] == [
            (first, 5),
            (second, 3),
        ]
        assert datetime.fromisoformat(seen["outcomes"][0]["answered_at"]) == answered
        assert seen["outcome_summary"] == {
            "baseline_pain_score": 7,
            "latest": 3,
            "change_from_baseline": -4,
            "count": 2,
        }
        listed = (await client.get("/v1/plans", params={"client_id": client_id})).json()
        assert listed[0]["outcome_summary"]["latest"] == 3

        bundle = await _observations(client, client_id)
        assert bundle.type == "searchset" and bundle.total == 2
        found = [Observation.model_validate(e.resource.model_dump()) for e in bundle.entry or []]
        assert [o.valueInteger for o in found] == [5, 3]
        first_obs = found[0]
        assert first_obs.status == "final"
        assert (first_obs.code.coding[0].system, first_obs.code.coding[0].code) == (
            "http://loinc.org",
            LOINC_PAIN,
        )
        assert first_obs.category[0].coding[0].code == "survey"
        assert first_obs.subject.reference == f"Patient/{client_id}"
        assert first_obs.effectiveDateTime == answered
        # A reference works as well as a bare id; each entry's fullUrl reads back.
        assert (await _observations(client, f"Patient/{client_id}")).total == 2
        read = await client.get(f"/fhir/R4/Observation/{first_obs.id}")
        assert Observation.model_validate_json(read.content).valueInteger == 5
        assert (await _observations(client, str(uuid.uuid4()))).total == 0
        assert (await client.get("/fhir/R4/Observation")).status_code == 422


async def test_a_score_follows_its_counted_session_else_the_newest_plan_else_the_client(
    database_url: str, nats_url: str
) -> None:
    async with running_referrals(database_url, nats_url) as (client, _app):
        client_id = await _client_known(client, nats_url)
        # Before any plan: kept for the client (FHIR), on no plan made later.
        early = str(uuid.uuid4())
        await publish(nats_url, outcome_event(client_id, early, 8))

        async def early_kept() -> bool:
            return bool((await _observations(client, client_id)).total == 1)

        await eventually(early_kept, what="the score before any plan kept for the client")
        older = await make_plan(client, client_id, massage_sessions=3)
        newer = await make_plan(client, client_id, massage_sessions=3)
        # The massage session counts toward the older plan: its check-in goes there too.
        massage = str(uuid.uuid4())
        await publish(nats_url, session_event(client_id, session_id=massage))

        async def counted() -> bool:
            row = (await client.get(f"/v1/plans/{older['id']}")).json()
            return bool(row["components"][0]["completed"] == 1)

        await eventually(counted, what="the massage session counted toward the older plan")
        elsewhere = str(uuid.uuid4())
        await publish(
            nats_url,
            outcome_event(client_id, massage, 4),
            outcome_event(client_id, elsewhere, 6),
        )
        on_older = await eventually(lambda: _plan_with(client, older["id"], 1), what="older")
        on_newer = await eventually(lambda: _plan_with(client, newer["id"], 1), what="newer")
        assert [o["session_id"] for o in on_older["outcomes"]] == [massage]
        assert [o["session_id"] for o in on_newer["outcomes"]] == [elsewhere]
        assert (await _observations(client, client_id)).total == 3


async def test_a_partner_treating_the_plan_gets_the_observation_by_webhook(
    database_url: str, nats_url: str
) -> None:
    async with (
        webhook_receiver() as receiver,
        running_referrals(database_url, nats_url) as (client, _app),
    ):
        partner = await make_partner(client, webhook_url=receiver.url)
        receiver.secret = partner["webhook_secret"]
        stranger = await make_partner(client, name="Elsewhere Physio")
        client_id = await _client_known(client, nats_url)
        plan = await make_plan(client, client_id)
        referral = await post_ok(client, "/v1/referrals", referral_body(plan, partner))
        await eventually(webhooks(receiver, "requested"), what="the referral's webhook")
        async with as_partner(client, partner["api_key"]) as pt:
            await post_ok(pt, f"/v1/partner/referrals/{referral['id']}/accept", {})
            session_id = str(uuid.uuid4())
            await publish(nats_url, outcome_event(client_id, session_id, 4))

            told = await eventually(webhooks(receiver, "outcome"), what="the outcome webhook")
            assert told[0].verified and told[0].bundle is not None, told[0].error
            kinds = [e.resource.get_resource_type() for e in told[0].bundle.entry or []]
            assert kinds == ["ServiceRequest", "Task", "Patient", "Observation"]
            obs = Observation.model_validate(told[0].resource("Observation"))
            assert obs.valueInteger == 4 and obs.code.coding[0].code == LOINC_PAIN
            assert obs.subject.reference == f"Patient/{client_id}"
            assert obs.identifier[0].value == session_id

            # The partner API shows the same trend, and the partner may search the scores.
            mine = (await pt.get(f"/v1/partner/referrals/{referral['id']}")).json()
            assert [o["score"] for o in mine["plan"]["outcomes"]] == [4]
            assert mine["plan"]["outcome_summary"]["change_from_baseline"] == -3
            assert (await _observations(pt, client_id)).total == 1
        async with as_partner(client, stranger["api_key"]) as other:
            assert (await _observations(other, client_id)).total == 0
            answer = await other.get(f"/fhir/R4/Observation/{obs.id}")
            assert answer.status_code == 404


async def test_a_malformed_outcome_event_is_dead_lettered_and_the_next_lands(
    database_url: str, nats_url: str
) -> None:
    async with running_referrals(database_url, nats_url) as (client, _app):
        client_id = await _client_known(client, nats_url)
        plan = await make_plan(client, client_id)
        bad = outcome_event(client_id, str(uuid.uuid4()), 5).model_dump(mode="json")
        bad["data"]["score"] = 11  # out of 0-10
        raw = json.dumps(bad).encode()
        await publish_event(nats_url, raw, subject=events.OUTCOME_RECORDED)
        parked = await eventually(
            lambda: dlq_messages(nats_url, "dlq.REMINDERS.referrals-outcomes"),
            what="the malformed outcome in the DLQ",
        )
        assert parked[0].data == raw
        assert "malformed" in parked[0].headers["Dlq-Error"]
        assert parked[0].headers["Dlq-Original-Subject"] == events.OUTCOME_RECORDED

        await publish(nats_url, outcome_event(client_id, str(uuid.uuid4()), 6))
        seen = await eventually(lambda: _plan_with(client, plan["id"], 1), what="the next score")
        assert [o["score"] for o in seen["outcomes"]] == [6]


async def test_a_front_desk_of_another_location_sees_neither_plan_nor_scores(
    database_url: str, nats_url: str
) -> None:
    async with running_referrals(database_url, nats_url) as (client, _app):
        here, there = str(uuid.uuid4()), str(uuid.uuid4())
        client_id = await _client_known(client, nats_url)
        body = {
            "client_id": client_id,
            "location_id": here,
            "goals": "Sleep without pain",
            "baseline_pain_score": 6,
            "components": [{"discipline": "massage", "sessions": 4, "per_week": 1}],
        }
        plan = await post_ok(client, "/v1/plans", body)
        await publish(nats_url, outcome_event(client_id, str(uuid.uuid4()), 2))
        await eventually(lambda: _plan_with(client, plan["id"], 1), what="the score")

        _, desk_here = await grant_key(nats_url, location_ids=[here])
        _, desk_there = await grant_key(nats_url, location_ids=[there])
        base = str(client.base_url)
        await key_answers(base, desk_here, "/v1/plans", 200)
        await key_answers(base, desk_there, "/v1/plans", 200)
        mine = {"Authorization": f"Bearer {desk_here}"}
        theirs = {"Authorization": f"Bearer {desk_there}"}

        seen = (await client.get(f"/v1/plans/{plan['id']}", headers=mine)).json()
        assert seen["outcome_summary"]["change_from_baseline"] == -4
        assert (await _observations(client, client_id, mine)).total == 1
        assert (await client.get(f"/v1/plans/{plan['id']}", headers=theirs)).status_code == 404
        assert (await _observations(client, client_id, theirs)).total == 0
