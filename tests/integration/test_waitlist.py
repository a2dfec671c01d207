"""The waitlist at booking, over real HTTP with a real nats-server (SQLite, PostgreSQL): a
freed slot is offered in order, the first claim books it, the others are told it is
taken, an offer lapses and passes on, and nobody without consent is offered anything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from services.booking import db
from services.booking.app import create_app
from services.booking.waitlist import claims
from shared import events
from tests.integration.test_booking_api import next_monday_at, settings_for
from tests.support import ADMIN_KEY, AUTH, EventTap, eventually, serve, wait_ready
from tools.kit import ClinicBuilder
from tools.kit.events import new_phone, publish
from tools.seed import seed_demo

pytestmark = pytest.mark.asyncio(loop_scope="session")

WAITLIST = "booking.waitlist.>"


@asynccontextmanager
async def running_booking(
    database_url: str, nats_url: str, **extra: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(settings_for(database_url, nats_url, waitlist_lease_seconds=2, **extra))
    async with serve(app) as base_url:
        await wait_ready(base_url)
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=30) as client:
            yield client, app


async def clinic_with_clients(
    client: httpx.AsyncClient, consents: list[bool], **location: Any
) -> Any:
    """Downtown with one room and one therapist; client 0 (who will cancel) and one client
    per entry of ``consents``, each with a phone of their own."""
    builder = ClinicBuilder()
    builder.location("Downtown", rooms=["Room 1"], **location)
    builder.treatment("Medical massage 60")
    builder.therapist("Ana")
    builder.client("Cara", "Cancel", phone=new_phone())
    for n, consent in enumerate(consents):
        language = "es" if n == 1 else "en"
        builder.client(f"Wai{n}", "Ting", phone=new_phone(), sms_consent=consent, language=language)
    return await builder.create(client)


async def join(client: httpx.AsyncClient, clinic: Any, who: int, **extra: Any) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    body = {
        "client_id": clinic.clients[who]["id"],
        "service_id": clinic.treatment["id"],
        "location_id": clinic.location["id"],
        "earliest": today.isoformat(),
        "latest": (today + timedelta(days=30)).isoformat(),
        **extra,
    }
    response = await client.post("/v1/waitlist", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def book(client: httpx.AsyncClient, clinic: Any, start: datetime, who: int = 0) -> str:
    response = await client.post("/v1/sessions", json=clinic.session_body(start, client=who))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def of_type(tap: EventTap, event_type: str) -> list[dict[str, Any]]:
    return [e["data"] for e in tap.events() if e["type"] == event_type]


async def wait_count(tap: EventTap, event_type: str, count: int, timeout: float = 15.0) -> Any:
    async def enough() -> list[dict[str, Any]] | None:
        found = of_type(tap, event_type)
        return found if len(found) >= count else None

    return await eventually(enough, timeout=timeout, what=f"{count} × {event_type}")


def claim_event(offer: dict[str, Any]) -> events.CloudEvent[Any]:
    """What reminders publishes when the client texts BOOK to an open offer."""
    data = events.ReplyReceived(
        phone=offer["client"]["phone"],
        client_id=offer["client"]["id"],
        intent="claim",
        offer_id=offer["offer_id"],
    )
    return events.make_event(events.REPLY_RECEIVED, "reminders", data)


async def test_a_cancel_offers_the_slot_to_the_first_three_who_may_be_texted_in_order(
    database_url: str, nats_url: str
) -> None:
    async with running_booking(database_url, nats_url) as (client, _app):
        # Client 1 joins first but never agreed to texts: an offer cannot reach them.
        clinic = await clinic_with_clients(client, [False, True, True, True, True])
        start = next_monday_at(10)
        session_id = await book(client, clinic, start)
        entries = [await join(client, clinic, who) for who in range(1, 6)]
        assert [e["status"] for e in entries] == ["waiting"] * 5
        assert entries[1]["times_of_day"] == []
        async with EventTap(nats_url, WAITLIST) as tap:
            cancelled = await client.post(
                f"/v1/sessions/{session_id}/cancel", json={"reason": "flu"}
            )
            assert cancelled.status_code == 200, cancelled.text
            offered = await wait_count(tap, events.WAITLIST_OFFERED, 3)
        assert [o["entry_id"] for o in offered] == [e["id"] for e in entries[1:4]]
        first = offered[0]
        assert first["client"] == {
            "id": clinic.clients[2]["id"],
            "first_name": "Wai1",
            "phone": clinic.clients[2]["phone"],
            "sms_consent": True,
            "language": "es",
        }
        assert first["slot"]["start"].startswith(start.strftime("%Y-%m-%dT%H:%M"))
        assert first["slot"]["therapist_id"] == clinic.therapists[0]["id"]
        assert first["slot"]["location"]["phone"] == clinic.location["phone"]
        expires = datetime.fromisoformat(first["expires_at"])
        assert timedelta(minutes=14) < expires - datetime.now(UTC) <= timedelta(minutes=15)
        assert entries[0]["id"] not in {
            o["entry_id"] for o in of_type(tap, "booking.waitlist.offered")
        }


async def test_the_first_claim_books_and_the_others_are_told_it_is_taken(
    database_url: str, nats_url: str
) -> None:
    async with running_booking(database_url, nats_url) as (client, _app):
        clinic = await clinic_with_clients(client, [True, True, True])
        start = next_monday_at(11)
        session_id = await book(client, clinic, start)
        entries = [await join(client, clinic, who) for who in range(1, 4)]
        async with (
            EventTap(nats_url, WAITLIST) as tap,
            EventTap(nats_url, events.SESSION_BOOKED) as booked,
        ):
            await client.post(f"/v1/sessions/{session_id}/cancel", json={"reason": "flu"})
            offered = await wait_count(tap, events.WAITLIST_OFFERED, 3)
            winner = offered[1]
            await publish(nats_url, claim_event(winner))
            session = await booked.wait_for(
                lambda e: e["data"]["client"]["id"] == winner["client"]["id"]
            )
            filled = await wait_count(tap, events.WAITLIST_FILLED, 1)
            taken = await wait_count(tap, events.WAITLIST_TAKEN, 2)
            # A late BOOK from a client who was told: taken again, no second session.
            await publish(nats_url, claim_event(offered[0]))
            await wait_count(tap, events.WAITLIST_TAKEN, 3)
        assert session["data"]["start"].startswith(start.strftime("%Y-%m-%dT%H:%M"))
        assert session["data"]["client"]["language"] == "es"  # Wai1 reads Spanish
        assert [f["offer_id"] for f in filled] == [winner["offer_id"]]
        assert {t["offer_id"] for t in taken} == {offered[0]["offer_id"], offered[2]["offer_id"]}
        entry = (await client.get(f"/v1/waitlist/{entries[1]['id']}")).json()
        assert entry["status"] == "filled" and entry["session_id"] == session["data"]["session_id"]
        waiting = (await client.get("/v1/waitlist", params={"status": "waiting"})).json()
        assert entries[1]["id"] not in {e["id"] for e in waiting}
        mine = (
            await client.get("/v1/sessions", params={"client_id": winner["client"]["id"]})
        ).json()
        assert [s["status"] for s in mine] == ["booked"]
        assert len(of_type(booked, events.SESSION_BOOKED)) == 1


async def test_two_claims_at_the_same_moment_give_one_session(
    database_url: str, nats_url: str
) -> None:
    async with running_booking(database_url, nats_url) as (client, app):
        runtime = app.state.runtime
        clinic = await clinic_with_clients(client, [True, True, True])
        start = next_monday_at(12)
        session_id = await book(client, clinic, start)
        for who in range(1, 4):
            await join(client, clinic, who)
        async with EventTap(nats_url, WAITLIST) as tap:
            await client.post(f"/v1/sessions/{session_id}/cancel", json={"reason": "flu"})
            offered = await wait_count(tap, events.WAITLIST_OFFERED, 3)

            async def consumer_claims(offer: dict[str, Any]) -> None:
                # What two consumers (or two replicas) do with two BOOK replies at once.
                async with runtime.uow.write() as session:
                    await claims.apply_claim(runtime.booking, session, claim_event(offer).data)

            await asyncio.gather(*(consumer_claims(o) for o in [*offered, offered[0]]))
            filled = await wait_count(tap, events.WAITLIST_FILLED, 1)
            await wait_count(tap, events.WAITLIST_TAKEN, 2)
        async with runtime.uow.read() as session:
            live = await session.scalar(
                select(func.count())
                .select_from(db.Session)
                .where(db.Session.start_at == start, db.Session.status == "booked")
            )
        assert live == 1
        assert len(filled) == 1
        winner = filled[0]["client"]["id"]
        assert {t["client"]["id"] for t in of_type(tap, events.WAITLIST_TAKEN)} == {
            o["client"]["id"] for o in offered
        } - {winner}


async def test_an_offer_that_lapses_passes_the_slot_to_the_next_entry(
    database_url: str, nats_url: str
) -> None:
    async with running_booking(database_url, nats_url, waitlist_offer_seconds=2) as (
        client,
        _app,
    ):
        clinic = await clinic_with_clients(client, [True, True, True, True])
        start = next_monday_at(14)
        session_id = await book(client, clinic, start)
        entries = [await join(client, clinic, who) for who in range(1, 5)]
        async with EventTap(nats_url, WAITLIST) as tap:
            await client.post(f"/v1/sessions/{session_id}/cancel", json={"reason": "flu"})
            first = await wait_count(tap, events.WAITLIST_OFFERED, 3)
            expired = await wait_count(tap, events.WAITLIST_EXPIRED, 3)
            offered = await wait_count(tap, events.WAITLIST_OFFERED, 4)
            # The 4th lapses too; nobody is left, nobody is offered twice.
            await wait_count(tap, events.WAITLIST_EXPIRED, 4)
        assert {e["offer_id"] for e in expired} == {o["offer_id"] for o in first}
        assert offered[3]["entry_id"] == entries[3]["id"]
        assert len(of_type(tap, events.WAITLIST_OFFERED)) == 4
        waiting = (await client.get("/v1/waitlist", params={"status": "waiting"})).json()
        assert {e["id"] for e in entries} <= {e["id"] for e in waiting}


async def test_a_move_frees_its_old_time_and_a_no_show_does_not(
    database_url: str, nats_url: str
) -> None:
    async with running_booking(database_url, nats_url) as (client, app):
        runtime = app.state.runtime
        clinic = await clinic_with_clients(client, [True])
        early, later = next_monday_at(9), next_monday_at(15)
        moving = await book(client, clinic, early)
        missed = await book(client, clinic, next_monday_at(11))
        entry = await join(client, clinic, 1, times_of_day=["morning"])
        assert entry["times_of_day"] == ["morning"]
        async with EventTap(nats_url, WAITLIST) as tap:
            assert (await client.post(f"/v1/sessions/{missed}/no-show")).status_code == 200
            async with runtime.uow.read() as session:
                assert await session.scalar(select(func.count(db.WaitlistOffer.id))) == 0
            moved = await client.post(
                f"/v1/sessions/{moving}/reschedule", json={"start": later.isoformat()}
            )
            assert moved.status_code == 200, moved.text
            offer = (await wait_count(tap, events.WAITLIST_OFFERED, 1))[0]
        assert offer["entry_id"] == entry["id"]
        assert offer["slot"]["start"].startswith(early.strftime("%Y-%m-%dT%H:%M"))


async def test_a_front_desk_reaches_only_its_locations_waitlist(
    database_url: str, nats_url: str
) -> None:
    async with running_booking(database_url, nats_url) as (client, _app):
        ours = await clinic_with_clients(client, [True])
        theirs = await clinic_with_clients(client, [True])
        mine = await join(client, ours, 1)
        other = await join(client, theirs, 1)
        key = await client.post(
            "/v1/api-keys",
            json={"name": "desk", "role": "front_desk", "location_ids": [ours.location["id"]]},
        )
        desk = {"Authorization": f"Bearer {key.json()['api_key']}"}
        listed = (await client.get("/v1/waitlist", headers=desk)).json()
        assert [e["id"] for e in listed] == [mine["id"]]
        assert (await client.get(f"/v1/waitlist/{other['id']}", headers=desk)).status_code == 404
        assert (await client.delete(f"/v1/waitlist/{other['id']}", headers=desk)).status_code == 404
        body = {
            "client_id": theirs.clients[1]["id"],
            "service_id": theirs.treatment["id"],
            "location_id": theirs.location["id"],
            "earliest": "2030-01-01",
            "latest": "2030-01-31",
        }
        assert (await client.post("/v1/waitlist", json=body, headers=desk)).status_code == 404
        assert (await client.delete(f"/v1/waitlist/{mine['id']}", headers=desk)).status_code == 204
        assert (await client.get(f"/v1/waitlist/{mine['id']}")).json()["status"] == "removed"


async def test_bad_waitlist_and_language_input_is_refused_clearly(
    database_url: str, nats_url: str
) -> None:
    async with running_booking(database_url, nats_url) as (client, _app):
        clinic = await clinic_with_clients(client, [True, True])
        body = {
            "client_id": clinic.clients[1]["id"],
            "service_id": clinic.treatment["id"],
            "location_id": clinic.location["id"],
            "earliest": "2030-02-10",
            "latest": "2030-02-01",
        }
        backwards = await client.post("/v1/waitlist", json=body)
        assert backwards.status_code == 422 and "latest" in backwards.text
        window = {"earliest": "2030-02-01", "latest": "2030-02-10"}
        odd = await client.post("/v1/waitlist", json={**body, **window, "times_of_day": ["noon"]})
        assert odd.status_code == 422 and "times_of_day" in odd.text
        over = await client.post(
            "/v1/waitlist", json={**body, "earliest": "2020-01-01", "latest": "2020-01-02"}
        )
        assert over.status_code == 422 and "latest" in over.text
        for field in ("client_id", "service_id", "location_id", "therapist_id"):
            unknown = await client.post("/v1/waitlist", json={**body, **window, field: "nope"})
            assert unknown.status_code == 404, (field, unknown.text)
        await client.patch(f"/v1/services/{clinic.treatment['id']}", json={"active": False})
        retired = await client.post("/v1/waitlist", json={**body, **window})
        assert retired.status_code == 409 and "retired" in retired.text

        who = clinic.clients[1]
        assert who["language"] == "en" and clinic.clients[2]["language"] == "es"
        bad = await client.patch(f"/v1/clients/{who['id']}", json={"language": "Spanish"})
        assert bad.status_code == 422 and "language" in bad.text
        changed = await client.patch(f"/v1/clients/{who['id']}", json={"language": "es-MX"})
        assert changed.status_code == 200 and changed.json()["language"] == "es-MX"
        assert (await client.get(f"/v1/clients/{who['id']}")).json()["language"] == "es-MX"
        refused = await client.post(
            "/v1/clients",
            json={"first_name": "A", "last_name": "B", "phone": new_phone(), "language": "e"},
        )
        assert refused.status_code == 422 and "language" in refused.text


async def test_a_claim_of_a_slot_booked_meanwhile_is_told_it_is_taken(
    database_url: str, nats_url: str
) -> None:
    async with running_booking(database_url, nats_url) as (client, _app):
        clinic = await clinic_with_clients(client, [True, True])
        start = next_monday_at(16)
        session_id = await book(client, clinic, start)
        await join(client, clinic, 1)
        await join(client, clinic, 2)
        async with (
            EventTap(nats_url, WAITLIST) as tap,
            EventTap(nats_url, events.SESSION_BOOKED) as booked,
        ):
            await client.post(f"/v1/sessions/{session_id}/cancel", json={"reason": "flu"})
            offered = await wait_count(tap, events.WAITLIST_OFFERED, 2)
            # The front desk gives the time to someone on the phone before anyone texts BOOK.
            phoned = await book(client, clinic, start)
            await publish(nats_url, claim_event(offered[0]))
            taken = await wait_count(tap, events.WAITLIST_TAKEN, 2)
        assert {t["offer_id"] for t in taken} == {o["offer_id"] for o in offered}
        assert not of_type(tap, events.WAITLIST_FILLED)
        assert [e["session_id"] for e in of_type(booked, events.SESSION_BOOKED)] == [phoned]


async def test_the_demo_seed_puts_a_client_on_the_waitlist(
    sqlite_database_url: str, nats_url: str
) -> None:
    async with running_booking(sqlite_database_url, nats_url) as (client, _app):
        seeded = await asyncio.to_thread(seed_demo, str(client.base_url), ADMIN_KEY)
        assert seeded["seeded"]
        entries = (await client.get("/v1/waitlist")).json()
        assert [e["client_id"] for e in entries] == [seeded["clients"][1]["id"]]
        assert entries[0]["times_of_day"] == ["afternoon"] and entries[0]["status"] == "waiting"
