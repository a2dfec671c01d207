"""Creates arriving together share a transaction (``create_queue``) and one read: each
caller still gets its own answer, checked against the others of its batch."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.referrals_support import (
    client_event,
    known_client,
    make_partner,
    make_plan,
    publish,
    referral_body,
    running_referrals,
)
from tests.support import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_creates_sent_together_each_get_their_own_answer(
    database_url: str, nats_url: str
) -> None:
    async with running_referrals(database_url, nats_url) as (client, app):
        physio = await make_partner(client)
        acupuncture = await make_partner(client, discipline="acupuncture")
        client_ids = [str(uuid.uuid4()) for _ in range(6)]
        await publish(nats_url, *(client_event(c) for c in client_ids))

        async def all_known() -> bool:
            return all([await known_client(client, c) for c in client_ids])

        await eventually(all_known, what="the client events applied")
        plans = [await make_plan(client, c) for c in client_ids]

        bodies = [referral_body(plan, physio) for plan in plans]
        bodies.append(referral_body(plans[0], physio))  # the same partner and plan again
        bodies.append(referral_body(plans[1], acupuncture))  # another discipline: fine
        bodies.append({**referral_body(plans[2], physio), "plan_id": "no-such-plan"})
        bodies.append(referral_body(plans[3], {"id": "no-such-partner"}))

        async def create(body: dict[str, object]) -> httpx.Response:
            return await client.post("/v1/referrals", json=body)

        answers = await asyncio.gather(*(create(b) for b in bodies))
        statuses = [a.status_code for a in answers]
        # Plan 0 twice: whichever came first is created, the other refused.
        first, again = statuses[0], statuses[6]
        assert sorted([first, again]) == [201, 409], [a.text for a in answers]
        assert statuses[1:6] == [201] * 5 and statuses[7] == 201
        assert statuses[8:] == [422, 422]
        assert [a.json()["error"] for a in answers[8:]] == ["UnknownPlan", "UnknownPartner"]
        # They were written together: fewer transactions than creates.
        assert app.state.runtime.referrals.creates.batches < len(bodies)

        created = [a.json() for a in answers if a.status_code == 201]
        assert len({c["id"] for c in created}) == 7
        for body, answer in zip(bodies, answers, strict=True):
            if answer.status_code == 201:
                row = answer.json()
                assert (row["plan_id"], row["partner_id"]) == (body["plan_id"], body["partner_id"])
                assert row["status"] == "sent" and row["client_id"] in client_ids
        listed = (await client.get("/v1/referrals", params={"plan_id": plans[0]["id"]})).json()
        assert len(listed) == 1
