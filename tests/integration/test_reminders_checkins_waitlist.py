"""Check-ins, waitlist offers and texts in the client's language, against real parts: a
nats-server, the Twilio sandbox over HTTP, SQLite and PostgreSQL. Events are published as
booking publishes them; replies come from the sandbox's phones, signed as Twilio signs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio
from babel.dates import format_datetime
from twilio.request_validator import RequestValidator

from services.reminders import db
from services.reminders.settings import SANDBOX_AUTH_TOKEN
from services.reminders.texts import gsm7_segments, to_gsm
from shared import events
from tests.integration.test_reminders_flow import Reminders, start_reminders
from tests.reminders_support import (
    Booking,
    Sandbox,
    now,
    publish,
    running_sandbox,
    wait_log,
)
from tests.support import EventTap, eventually
from tools.kit.events import RIVERSIDE, client_ref, new_phone

pytestmark = pytest.mark.asyncio(loop_scope="session")

NY = ZoneInfo("America/New_York")
CHECKIN_ONLY = [{"name": "checkin", "kind": "checkin", "offset_minutes": 24 * 60}]
OFFERS_ONLY = [{"name": "waitlist_offer", "kind": "waitlist_offer", "offset_minutes": 0}]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def reminders(database_url: str, nats_url: str, sandbox: Sandbox) -> AsyncIterator[Reminders]:
    async for running in start_reminders(database_url, nats_url, sandbox):
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def on_sqlite(
    sqlite_database_url: str, nats_url: str, sandbox: Sandbox
) -> AsyncIterator[Reminders]:
    async for running in start_reminders(sqlite_database_url, nats_url, sandbox):
        yield running


def completed(b: Booking, at: datetime) -> events.CloudEvent[Any]:
    """``booking.session.completed`` as booking published it at ``at``."""
    b.status = "completed"
    return b.event(events.SESSION_COMPLETED).model_copy(update={"time": at})


async def post_inbound(reminders: Reminders, sid: str, phone: str, body: str) -> httpx.Response:
    """Twilio's incoming-message webhook, signed; the same ``sid`` is a replay."""
    form = {"MessageSid": sid, "From": phone, "To": "+15005550006", "Body": body}
    url = f"{reminders.url}/twilio/inbound"
    signature = RequestValidator(SANDBOX_AUTH_TOKEN).compute_signature(url, form)
    answer = await reminders.http.post(
        "/twilio/inbound", data=form, headers={"X-Twilio-Signature": signature}
    )
    assert answer.status_code == 200, answer.text
    return answer


async def one_reply(reminders: Reminders, phone: str, body: str) -> str:
    answer = await reminders.sandbox.reply(phone, body)
    assert answer["webhook_status"] == 200
    [reply] = answer["replies"]
    return str(reply["body"])


# --- check-ins ------------------------------------------------------------------------


async def _known(reminders: Reminders, session_id: str) -> bool:
    async with reminders.runtime.reminders.uow.read() as session:
        return await session.get(db.Session, session_id) is not None


async def test_a_completed_session_gets_one_checkin_and_a_7_is_recorded_once(
    reminders: Reminders,
) -> None:
    assert (await reminders.put_rules(CHECKIN_ONLY)).status_code == 200
    b = Booking(start=now() - timedelta(hours=26))
    await publish(reminders.nats_url, b.booked())
    await eventually(lambda: _known(reminders, b.session_id), what="the booked session")
    # Marked completed a day ago, give or take a few seconds: the check-in is due now.
    due = now() + timedelta(seconds=6)
    done = completed(b, due - timedelta(hours=24))
    await publish(reminders.nats_url, done)
    await publish(reminders.nats_url, done, msg_id=str(uuid.uuid4()))  # past JetStream's dedupe

    [question] = await reminders.sandbox.wait_for(b.phone, 1, timeout=20)
    canary = Booking()  # consumed after the replay: once it is texted, the replay was applied
    await publish(reminders.nats_url, canary.booked(), completed(canary, now()))
    await eventually(lambda: reminders.jobs(canary.session_id), what="the canary planned")
    body = question["body"]
    assert "How do you feel today?" in body and "0 (very well) to 10 (very bad)" in body
    assert "pain" not in body.lower() and gsm7_segments(body) == 1
    [row] = await wait_log(
        reminders.http, lambda rows: rows and rows[0]["submitted_at"], session_id=b.session_id
    )
    assert row["rule"] == "checkin"
    due_at = datetime.fromisoformat(row["due_at"]).timestamp()
    assert due_at == pytest.approx(due.timestamp(), abs=0.01), "24 h after completed"
    assert datetime.fromisoformat(row["submitted_at"]) >= due - timedelta(seconds=1)

    async with EventTap(reminders.nats_url, "reminders.>") as tap:
        sid = "SM" + uuid.uuid4().hex
        first = await post_inbound(reminders, sid, b.phone, "7")
        assert "we noted your answer: 7" in first.text
        replayed = await post_inbound(reminders, sid, b.phone, "7")
        assert replayed.text == first.text, "a replayed webhook gets the same answer"
        # Answered: another number has no open check-in, is not recorded, gets one note.
        late = await one_reply(reminders, b.phone, "8")
        assert "no open question" in late and "0 to 10" not in late
        await one_reply(reminders, b.phone, "HELP")  # a last event, to know the others are out
        await tap.wait_for(lambda e: e["data"].get("intent") == "help")
        outcomes = [e for e in tap.events() if e["type"] == events.OUTCOME_RECORDED]
        assert [o["data"]["score"] for o in outcomes] == [7]
        assert outcomes[0]["data"]["session_id"] == b.session_id
        assert outcomes[0]["data"]["client_id"] == b.client_id
        checkins = [e for e in tap.events() if e["data"].get("intent") == "checkin"]
        assert len(checkins) == 1
    assert len(await reminders.sandbox.to(b.phone)) == 1, "one question, never a second"


async def test_a_reply_that_is_not_a_number_gets_one_help_text_and_the_checkin_stays_open(
    on_sqlite: Reminders,
) -> None:
    reminders = on_sqlite
    rules = [{"name": "checkin", "kind": "checkin", "offset_minutes": 0}]
    assert (await reminders.put_rules(rules)).status_code == 200
    b = Booking(start=now() - timedelta(hours=2))
    await publish(reminders.nats_url, b.booked(), completed(b, now()))
    await reminders.sandbox.wait_for(b.phone, 1)

    async with EventTap(reminders.nats_url, events.OUTCOME_RECORDED) as tap:
        help_text = await one_reply(reminders, b.phone, "feeling better thanks")
        assert "one number from 0 to 10" in help_text
        assert "How do you feel" not in help_text, "help, not the question again"
        assert "Thank you Maria, we noted your answer: 3" in await one_reply(
            reminders, b.phone, "3/10"
        )
        outcome = await tap.wait_for(lambda e: e["data"]["session_id"] == b.session_id)
    assert outcome["data"]["score"] == 3
    assert len(await reminders.sandbox.to(b.phone)) == 1


async def test_a_number_with_no_open_checkin_is_not_recorded(on_sqlite: Reminders) -> None:
    reminders = on_sqlite
    b = Booking()
    await publish(reminders.nats_url, b.booked())
    await reminders.sandbox.wait_for(b.phone, 1)  # a confirmation asks C, not a number
    async with EventTap(reminders.nats_url, "reminders.>") as tap:
        note = await one_reply(reminders, b.phone, "7")
        assert "no open question for that number" in note
        await one_reply(reminders, b.phone, "HELP")
        await tap.wait_for(lambda e: e["data"].get("intent") == "help")
        assert not [e for e in tap.events() if e["type"] == events.OUTCOME_RECORDED]
    assert "you're confirmed" in await one_reply(reminders, b.phone, "C"), "C still confirms"


# --- waitlist offers ------------------------------------------------------------------


def offer_event(
    event_type: str,
    offer_id: str,
    client: events.ClientRef,
    start: datetime,
    expires_at: datetime,
    location: events.LocationRef = RIVERSIDE,
) -> events.CloudEvent[Any]:
    slot = events.WaitlistSlot(
        start=start,
        end=start + timedelta(hours=1),
        therapist_id="t1",
        location=events.SlotLocationRef(
            id=location.id, name=location.name, timezone=location.timezone, phone=location.phone
        ),
    )
    data = events.WaitlistEvent(
        offer_id=offer_id,
        entry_id=str(uuid.uuid4()),
        client=client,
        slot=slot,
        expires_at=expires_at,
    )
    return events.make_event(event_type, "booking", data, subject=offer_id)


def local(moment: datetime, pattern: str, locale: str = "en") -> str:
    return to_gsm(format_datetime(moment, pattern, tzinfo=NY, locale=locale))


async def test_an_offer_is_texted_book_claims_it_and_taken_is_told(reminders: Reminders) -> None:
    client = client_ref()
    offer_id = str(uuid.uuid4())
    start = (now() + timedelta(days=2)).replace(minute=30, second=0, microsecond=0)
    expires = now() + timedelta(minutes=15)
    await publish(
        reminders.nats_url, offer_event(events.WAITLIST_OFFERED, offer_id, client, start, expires)
    )
    [offer] = await reminders.sandbox.wait_for(client.phone, 1)
    body = offer["body"]
    assert "Reply BOOK by " + local(expires, "h:mm a") in body
    assert local(start, "EEE MMM d 'at' h:mm a") in body and "Riverside Clinic" in body
    assert gsm7_segments(body) == 1

    async with EventTap(reminders.nats_url, events.REPLY_RECEIVED) as tap:
        ack = await one_reply(reminders, client.phone, "book")
        assert ack.startswith("Thanks Maria, we're booking")
        claim = await tap.wait_for(lambda e: e["data"]["phone"] == client.phone)
    assert claim["data"]["intent"] == "claim"
    assert claim["data"]["offer_id"] == offer_id and claim["data"]["client_id"] == client.id

    await publish(
        reminders.nats_url, offer_event(events.WAITLIST_TAKEN, offer_id, client, start, expires)
    )
    messages = await reminders.sandbox.wait_for(client.phone, 2)
    assert "is no longer free" in messages[-1]["body"]
    # The offer is closed: BOOK again claims nothing.
    assert "no open time to book" in await one_reply(reminders, client.phone, "BOOK")


async def test_no_offer_without_consent_and_none_in_quiet_hours(on_sqlite: Reminders) -> None:
    reminders = on_sqlite
    hour = datetime.now(NY).hour
    quiet = {"start": "12:00", "end": "13:00"} if hour < 12 else {"start": "01:00", "end": "02:00"}
    quiet_place = RIVERSIDE.model_copy(update={"id": f"loc-{uuid.uuid4().hex[:8]}"})
    answer = await reminders.put_rules(
        OFFERS_ONLY, locations={quiet_place.id: {"rules": [], "quiet_hours": quiet}}
    )
    assert answer.status_code == 200, answer.text
    start = now() + timedelta(days=1)
    expires = now() + timedelta(minutes=15)
    unwilling = client_ref(sms_consent=False)
    asleep = client_ref()
    await publish(
        reminders.nats_url,
        offer_event(events.WAITLIST_OFFERED, str(uuid.uuid4()), unwilling, start, expires),
        offer_event(
            events.WAITLIST_OFFERED, str(uuid.uuid4()), asleep, start, expires, quiet_place
        ),
    )
    for client, reason in ((unwilling, "no_consent"), (asleep, "quiet_hours")):
        [row] = await wait_log(
            reminders.http, lambda rows: rows, phone=client.phone, what=f"the {reason} skip"
        )
        assert (row["rule"], row["status"], row["reason"]) == ("waitlist_offer", "skipped", reason)
        assert await reminders.sandbox.to(client.phone) == []
        assert "no open time to book" in await one_reply(reminders, client.phone, "BOOK")


async def test_a_location_can_turn_offers_off(on_sqlite: Reminders) -> None:
    reminders = on_sqlite
    place = RIVERSIDE.model_copy(update={"id": f"loc-{uuid.uuid4().hex[:8]}"})
    off = [{"name": "waitlist_offer", "kind": "waitlist_offer", "enabled": False}]
    answer = await reminders.put_rules(OFFERS_ONLY, locations={place.id: {"rules": off}})
    assert answer.status_code == 200, answer.text
    client = client_ref()
    await publish(
        reminders.nats_url,
        offer_event(
            events.WAITLIST_OFFERED,
            str(uuid.uuid4()),
            client,
            now() + timedelta(days=1),
            now() + timedelta(minutes=15),
            place,
        ),
    )
    [row] = await wait_log(reminders.http, lambda rows: rows, phone=client.phone)
    assert (row["status"], row["reason"]) == ("skipped", "disabled")
    assert await reminders.sandbox.to(client.phone) == []


# --- Spanish --------------------------------------------------------------------------


async def test_a_spanish_speaking_client_gets_spanish_texts_within_budget(
    reminders: Reminders,
) -> None:
    phone = new_phone()
    client = events.ClientRef(
        id=str(uuid.uuid4()), first_name="Lucía", phone=phone, sms_consent=True, language="es"
    )
    start = (now() + timedelta(days=3)).replace(minute=15, second=0, microsecond=0)
    offer_id = str(uuid.uuid4())
    await publish(
        reminders.nats_url,
        offer_event(
            events.WAITLIST_OFFERED, offer_id, client, start, now() + timedelta(minutes=15)
        ),
    )
    [offer] = await reminders.sandbox.wait_for(phone, 1)
    weekday = local(start, "EEEE", "es")
    assert weekday in {"lunes", "martes", "miércoles", "jueves", "viernes", "sabado", "domingo"}
    day = local(start, "d 'de' MMMM", "es")
    assert f"{weekday} {day}" in offer["body"]
    assert offer["body"].startswith("Hola Lucia, hay una cita libre en Riverside Clinic")
    assert "Responda BOOK antes de las" in offer["body"]
    assert gsm7_segments(offer["body"]) == 1, "GSM-7, one SMS"

    # The client's sessions are texted in Spanish too.
    b = Booking(phone=phone, client_id=client.id, first_name="Lucía")
    booked = b.booked()
    booked.data.client.language = "es"
    await publish(reminders.nats_url, booked)
    messages = await reminders.sandbox.wait_for(phone, 2)
    confirmation = messages[-1]["body"]
    assert confirmation.startswith("Hola Lucia, su cita es el " + local(b.start, "EEEE", "es"))
    assert "Responda C para confirmar" in confirmation and gsm7_segments(confirmation) == 1
    assert "confirmamos su cita" in await one_reply(reminders, phone, "C")
