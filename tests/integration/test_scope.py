"""Keys and scope (CONTRACT "Keys and scope"): two front desks of two locations each reach
only their own location's data in every service, anything else answers 404 as if it did
not exist; a key issued or revoked at booking holds at reminders and referrals within
5 seconds; a partner's rotated key ends at once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from services.booking.app import create_app as create_booking
from services.referrals.app import create_app as create_referrals
from services.reminders.app import create_app as create_reminders
from shared.natsd import free_port
from tests.integration.test_booking_api import make_clinic, next_monday_at
from tests.integration.test_booking_api import settings_for as booking_settings
from tests.keys_support import key_answers
from tests.referrals_support import make_partner, referral_body, referrals_settings
from tests.reminders_support import Sandbox, running_sandbox, wait_active
from tests.reminders_support import settings_for as reminders_settings
from tests.support import AUTH, eventually, serve, sqlite_url, wait_ready
from tools.kit.care import plan_body
from tools.kit.postgres import plain_url

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as running:
        yield running


def sibling_database(database_url: str, tmp_path: Any, service: str) -> str:
    """A database of its own for ``service``: a SQLite file beside booking's, or a fresh
    PostgreSQL database on the same server (each service owns its database)."""
    if database_url.startswith("sqlite"):
        return sqlite_url(tmp_path, service)
    plain = plain_url(database_url)
    root, name = plain.rsplit("/", 1)
    sibling = f"{name.split('?')[0]}_{service}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{sibling}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{sibling}"')
    return f"{root}/{sibling}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def two_locations(admin: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two clinics (location, therapist, room, client living there), each with a session
    booked; therapist B has time off."""
    made = []
    for hour in (10, 11):
        clinic = await make_clinic(admin)
        client_id = clinic["client"]["id"]
        home = {"home_location_id": clinic["location"]["id"]}
        patched = await admin.patch(f"/v1/clients/{client_id}", json=home)
        assert patched.status_code == 200, patched.text
        booked = await admin.post(
            "/v1/sessions",
            json={
                "client_id": client_id,
                "service_id": clinic["service"]["id"],
                "location_id": clinic["location"]["id"],
                "start": next_monday_at(hour).isoformat(),
            },
        )
        assert booked.status_code == 201, booked.text
        clinic["session"] = booked.json()
        made.append(clinic)
    a, b = made
    off = await admin.post(
        f"/v1/therapists/{b['therapists'][0]['id']}/time-off",
        json={"start": next_monday_at(15).isoformat(), "end": next_monday_at(16).isoformat()},
    )
    assert off.status_code == 201, off.text
    return a, b


async def desk_key(admin: httpx.AsyncClient, location_id: str) -> dict[str, Any]:
    issued = await admin.post(
        "/v1/api-keys",
        json={"name": "desk", "role": "front_desk", "location_ids": [location_id]},
    )
    assert issued.status_code == 201, issued.text
    return dict(issued.json())


async def assert_booking_scope(
    http: httpx.AsyncClient, mine: dict[str, Any], other: dict[str, Any]
) -> None:
    """What a front desk of ``mine``'s location reaches at booking, and what it does not."""
    loc, other_loc = mine["location"]["id"], other["location"]["id"]
    therapist, other_therapist = mine["therapists"][0]["id"], other["therapists"][0]["id"]
    client, other_client = mine["client"]["id"], other["client"]["id"]
    session, other_session = mine["session"]["id"], other["session"]["id"]

    assert [x["id"] for x in (await http.get("/v1/locations")).json()] == [loc]
    assert (await http.get(f"/v1/locations/{loc}")).status_code == 200
    assert (await http.get(f"/v1/locations/{loc}/rooms")).status_code == 200
    therapists = (await http.get("/v1/therapists")).json()
    assert [t["id"] for t in therapists] == [therapist]
    assert "ics_url" not in therapists[0], "the feed token is the admin's"
    assert "ics_url" not in (await http.get(f"/v1/therapists/{therapist}")).json()
    assert (await http.get(f"/v1/therapists/{therapist}/time-off")).status_code == 200
    assert [c["id"] for c in (await http.get("/v1/clients")).json()] == [client]
    assert (await http.get(f"/v1/clients/{client}")).status_code == 200
    assert [s["id"] for s in (await http.get("/v1/sessions")).json()] == [session]
    assert (await http.get(f"/v1/sessions/{session}")).status_code == 200
    window = {
        "service_id": mine["service"]["id"],
        "start": next_monday_at(9).isoformat(),
        "end": next_monday_at(17).isoformat(),
    }
    assert (
        await http.get("/v1/availability", params={**window, "location_id": loc})
    ).status_code == 200

    hidden = {
        "location": await http.get(f"/v1/locations/{other_loc}"),
        "rooms": await http.get(f"/v1/locations/{other_loc}/rooms"),
        "therapist": await http.get(f"/v1/therapists/{other_therapist}"),
        "time off": await http.get(f"/v1/therapists/{other_therapist}/time-off"),
        "new time off": await http.post(
            f"/v1/therapists/{other_therapist}/time-off",
            json={"start": next_monday_at(9).isoformat(), "end": next_monday_at(10).isoformat()},
        ),
        "client": await http.get(f"/v1/clients/{other_client}"),
        "client change": await http.patch(
            f"/v1/clients/{other_client}", json={"phone": "+12125550123"}
        ),
        "moving a client away": await http.patch(
            f"/v1/clients/{client}", json={"home_location_id": other_loc}
        ),
        "session": await http.get(f"/v1/sessions/{other_session}"),
        "session cancel": await http.post(
            f"/v1/sessions/{other_session}/cancel", json={"reason": "x"}
        ),
        "availability": await http.get(
            "/v1/availability", params={**window, "location_id": other_loc}
        ),
        "booking there": await http.post(
            "/v1/sessions",
            json={
                "client_id": client,
                "service_id": other["service"]["id"],
                "location_id": other_loc,
                "start": next_monday_at(12).isoformat(),
            },
        ),
        "their client here": await http.post(
            "/v1/sessions",
            json={
                "client_id": other_client,
                "service_id": mine["service"]["id"],
                "location_id": loc,
                "start": next_monday_at(12).isoformat(),
            },
        ),
    }
    assert {what: a.status_code for what, a in hidden.items()} == dict.fromkeys(hidden, 404)
    listed = await http.get("/v1/sessions", params={"location_id": other_loc})
    assert listed.json() == []
    # Both clinics' Maria have the same phone: the search finds this location's only.
    found = (await http.get("/v1/clients", params={"phone": other["client"]["phone"]})).json()
    assert [c["id"] for c in found] == [client]
    for admin_only in ("/v1/api-keys", "/v1/calendar-links"):
        assert (await http.get(admin_only)).status_code == 403


async def test_front_desks_reach_only_their_location_at_booking(
    database_url: str, nats_url: str
) -> None:
    app = create_booking(booking_settings(database_url, nats_url))
    async with serve(app) as url:
        await wait_ready(url)
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as admin:
            a, b = await two_locations(admin)
            key_a = await desk_key(admin, a["location"]["id"])
            key_b = await desk_key(admin, b["location"]["id"])
            for key, mine, other in ((key_a, a, b), (key_b, b, a)):
                async with httpx.AsyncClient(
                    base_url=url, headers=bearer(key["api_key"]), timeout=30
                ) as desk:
                    await assert_booking_scope(desk, mine, other)

            # A desk's new client belongs to its location; the admin sees every therapist's feed.
            async with httpx.AsyncClient(
                base_url=url, headers=bearer(key_a["api_key"]), timeout=30
            ) as desk:
                walk_in = await desk.post(
                    "/v1/clients",
                    json={"first_name": "Ana", "last_name": "Ruiz", "phone": "+12125550177"},
                )
                assert walk_in.json()["home_location_id"] == a["location"]["id"]
                elsewhere = await desk.post(
                    "/v1/clients",
                    json={
                        "first_name": "Ana",
                        "last_name": "Ruiz",
                        "phone": "+12125550177",
                        "home_location_id": b["location"]["id"],
                    },
                )
                assert elsewhere.status_code == 404
            assert all(t["ics_url"] for t in (await admin.get("/v1/therapists")).json())

            keys = (await admin.get("/v1/api-keys")).json()
            assert {k["id"] for k in keys} >= {key_a["id"], key_b["id"]}
            assert all("api_key" not in k for k in keys), "the key is shown once, at issue"
            assert (await admin.delete(f"/v1/api-keys/{key_a['id']}")).status_code == 204
            refused = await admin.get("/v1/locations", headers=bearer(key_a["api_key"]))
            assert refused.status_code == 401, "revoked at booking at once"
            still = await admin.get("/v1/locations", headers=bearer(key_b["api_key"]))
            assert still.status_code == 200
            [revoked] = [
                k for k in (await admin.get("/v1/api-keys")).json() if k["id"] == key_a["id"]
            ]
            assert revoked["revoked_at"] is not None
            assert (await admin.delete("/v1/api-keys/nope")).status_code == 404


async def test_a_key_of_booking_holds_everywhere_and_sees_its_location_only(
    database_url: str, nats_url: str, tmp_path: Any, sandbox: Sandbox
) -> None:
    booking_app = create_booking(booking_settings(database_url, nats_url))
    port = free_port()
    reminders_app = create_reminders(
        reminders_settings(
            sibling_database(database_url, tmp_path, "reminders"), nats_url, sandbox.url, port
        )
    )
    referrals_app = create_referrals(
        referrals_settings(sibling_database(database_url, tmp_path, "referrals"), nats_url)
    )
    async with (
        serve(booking_app) as booking_url,
        serve(reminders_app, port) as reminders_url,
        serve(referrals_app) as referrals_url,
    ):
        for url in (booking_url, reminders_url, referrals_url):
            await wait_ready(url)
        await wait_active(reminders_app)
        async with (
            httpx.AsyncClient(base_url=booking_url, headers=AUTH, timeout=30) as booking,
            httpx.AsyncClient(base_url=reminders_url, headers=AUTH, timeout=30) as reminders,
            httpx.AsyncClient(base_url=referrals_url, headers=AUTH, timeout=30) as referrals,
        ):
            a, b = await two_locations(booking)
            key_a = await desk_key(booking, a["location"]["id"])
            key_b = await desk_key(booking, b["location"]["id"])
            desk_a = bearer(key_a["api_key"])

            # Issued at booking, honoured by the others within 5 seconds.
            for url, path in ((reminders_url, "/v1/messages"), (referrals_url, "/v1/plans")):
                for key in (key_a, key_b):
                    await key_answers(url, key["api_key"], path, 200, timeout=5)

            # reminders: the confirmation texts of both sessions; each desk sees its own.
            async def both_texted() -> bool:
                rows = (await reminders.get("/v1/messages")).json()
                return {r["session_id"] for r in rows} >= {a["session"]["id"], b["session"]["id"]}

            await eventually(both_texted, timeout=20, what="both confirmations")
            seen = (await reminders.get("/v1/messages", headers=desk_a)).json()
            assert seen and {r["session_id"] for r in seen} == {a["session"]["id"]}
            theirs = await reminders.get(
                "/v1/messages", params={"session_id": b["session"]["id"]}, headers=desk_a
            )
            assert theirs.json() == []
            assert (await reminders.get("/v1/rules", headers=desk_a)).status_code == 403

            # referrals: plans of each location, a referral in B's plan.
            partner = await make_partner(referrals, discipline="physical_therapy")
            plans = {}
            for clinic in (a, b):
                body = {
                    **plan_body(clinic["client"]["id"]),
                    "location_id": clinic["location"]["id"],
                }
                made = await referrals.post("/v1/plans", json=body)
                assert made.status_code == 201, made.text
                plans[clinic["location"]["id"]] = made.json()
            plan_b = plans[b["location"]["id"]]
            referral = await referrals.post("/v1/referrals", json=referral_body(plan_b, partner))
            assert referral.status_code == 201, referral.text
            referral_b = referral.json()["id"]

            listed = (await referrals.get("/v1/plans", headers=desk_a)).json()
            assert [p["id"] for p in listed] == [plans[a["location"]["id"]]["id"]]
            assert (await referrals.get("/v1/referrals", headers=desk_a)).json() == []
            hidden = {
                "plan": await referrals.get(f"/v1/plans/{plan_b['id']}", headers=desk_a),
                "referral": await referrals.get(f"/v1/referrals/{referral_b}", headers=desk_a),
                "cancel": await referrals.post(
                    f"/v1/referrals/{referral_b}/cancel", json={"reason": "x"}, headers=desk_a
                ),
                "task": await referrals.get(f"/fhir/R4/Task/{referral_b}", headers=desk_a),
                "client": await referrals.get(f"/v1/clients/{b['client']['id']}", headers=desk_a),
                "new plan there": await referrals.post(
                    "/v1/plans",
                    json={**plan_body(a["client"]["id"]), "location_id": b["location"]["id"]},
                    headers=desk_a,
                ),
            }
            assert {k: v.status_code for k, v in hidden.items()} == dict.fromkeys(hidden, 404)
            refer_there = await referrals.post(
                "/v1/referrals", json=referral_body(plan_b, partner), headers=desk_a
            )
            assert refer_there.status_code == 422 and "plan" in refer_there.text
            desk_b = bearer(key_b["api_key"])
            assert (
                await referrals.get(f"/v1/referrals/{referral_b}", headers=desk_b)
            ).status_code == 200
            assert (await referrals.get("/v1/partners", headers=desk_b)).status_code == 403

            # Revoked at booking: refused there at once, by the others within 5 seconds.
            assert (await booking.delete(f"/v1/api-keys/{key_a['id']}")).status_code == 204
            assert (await booking.get("/v1/sessions", headers=desk_a)).status_code == 401
            await key_answers(reminders_url, key_a["api_key"], "/v1/messages", 401, timeout=5)
            await key_answers(referrals_url, key_a["api_key"], "/v1/plans", 401, timeout=5)
            assert (await referrals.get("/v1/plans", headers=desk_b)).status_code == 200
            # The bootstrap admin key still works everywhere.
            for http, path in ((reminders, "/v1/rules"), (referrals, "/v1/partners")):
                assert (await http.get(path)).status_code == 200


async def test_a_rotated_partner_key_ends_at_once(database_url: str, nats_url: str) -> None:
    app = create_referrals(referrals_settings(database_url, nats_url))
    async with serve(app) as url:
        await wait_ready(url)
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as admin:
            partner = await make_partner(admin)
            old = bearer(partner["api_key"])
            assert (await admin.get("/v1/partner/referrals", headers=old)).status_code == 200
            rotated = await admin.post(f"/v1/partners/{partner['id']}/rotate-key")
            assert rotated.status_code == 200, rotated.text
            new = bearer(rotated.json()["api_key"])
            assert (await admin.get("/v1/partner/referrals", headers=old)).status_code == 401
            assert (await admin.get("/v1/partner/referrals", headers=new)).status_code == 200
            assert (
                await admin.post(f"/v1/partners/{partner['id']}/rotate-key", headers=new)
            ).status_code == 403, "a partner does not rotate keys; the clinic's admin does"

            secret = await admin.post(f"/v1/partners/{partner['id']}/rotate-webhook-secret")
            assert secret.status_code == 200
            assert secret.json()["webhook_secret"] not in ("", partner["webhook_secret"])
            shown = (await admin.get(f"/v1/partners/{partner['id']}")).json()
            assert "webhook_secret" not in shown and "api_key" not in shown
            assert (await admin.post("/v1/partners/nope/rotate-key")).status_code == 404
