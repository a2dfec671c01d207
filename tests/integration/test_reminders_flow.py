"""Reminders against real parts: a nats-server, the Twilio sandbox over HTTP, the real
``twilio`` client, the service on a real port. Events are published as booking does."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import nats
import pytest
import pytest_asyncio
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from services.reminders import db, domain, firing, planning, transmit
from services.reminders.app import Runtime, create_app
from services.reminders.ledger import Recipient, claim
from services.reminders.links import AFTERCARE, Links
from services.reminders.settings import SANDBOX_AUTH_TOKEN
from shared import events
from shared.consumers import Deferred
from shared.natsd import free_port
from shared.settings import PROJECT_ROOT
from tests.reminders_support import (
    Booking,
    Sandbox,
    log_of,
    now,
    publish,
    running_sandbox,
    settings_for,
    wait_active,
    wait_log,
)
from tests.support import AUTH, EventTap, eventually, serve
from tools.kit.events import RIVERSIDE

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as running:
        yield running


@dataclass
class Reminders:
    url: str
    http: httpx.AsyncClient
    runtime: Runtime
    sandbox: Sandbox
    nats_url: str

    async def jobs(self, session_id: str) -> dict[str, float]:
        """Job id -> next run (epoch seconds) of one session, read from the job store."""
        async with self.runtime.reminders.uow.read() as session:
            rows = await session.execute(
                select(db.apscheduler_jobs.c.id, db.apscheduler_jobs.c.next_run_time).where(
                    db.apscheduler_jobs.c.id.like(f"{session_id}:%")
                )
            )
            return {row.id.split(":", 1)[1]: row.next_run_time for row in rows}

    async def put_rules(self, rules: list[dict[str, Any]], **extra: Any) -> httpx.Response:
        body = {"defaults": {"rules": rules, "quiet_hours": {"start": "00:00", "end": "24:00"}}}
        body.update(extra)
        return await self.http.put("/v1/rules", json=body)


async def start_reminders(
    database_url: str, nats_url: str, sandbox: Sandbox, **extra: Any
) -> AsyncIterator[Reminders]:
    port = free_port()
    app = create_app(settings_for(database_url, nats_url, sandbox.url, port, **extra))
    async with serve(app, port) as url:
        sandbox.point_inbound_at(url)
        await wait_active(app)
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as http:
            yield Reminders(url, http, app.state.runtime, sandbox, nats_url)


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


def reminder_rules(offset_minutes: int = -60) -> list[dict[str, Any]]:
    return [
        {"name": "confirmation", "kind": "confirmation", "offset_minutes": 0},
        {"name": "reminder_soon", "kind": "reminder", "offset_minutes": offset_minutes},
        {"name": "cancellation", "kind": "cancellation", "offset_minutes": 0},
        {"name": "reschedule", "kind": "reschedule", "offset_minutes": 0},
    ]


# --- booked, rescheduled, cancelled ---------------------------------------------------


async def test_booked_session_gets_a_delivered_confirmation(reminders: Reminders) -> None:
    b = Booking()
    async with EventTap(reminders.nats_url, "reminders.sms.>") as tap:
        await publish(reminders.nats_url, b.client_event(), b.booked())
        [message] = await reminders.sandbox.wait_for(b.phone, 1, status="delivered")
        body = message["body"]
        assert body.startswith("Hi Maria, you're booked for ")
        assert "Riverside Clinic" in body and "(706) 555-0100" in body
        assert "Reply C to confirm, R to reschedule, STOP to opt out." in body
        assert "lymph" not in body.lower() and "drainage" not in body.lower()
        local = b.start.astimezone(events_zone()).strftime("%-I:%M %p")
        assert local in body, "the time is on the location's clock"

        [row] = await wait_log(
            reminders.http,
            lambda rows: rows and rows[0]["status"] == "delivered",
            session_id=b.session_id,
        )
        assert row["provider_sid"] == message["sid"] and row["rule"] == "confirmation"
        sent = await tap.wait_for(lambda e: e["type"] == events.SMS_SENT)
        delivered = await tap.wait_for(lambda e: e["type"] == events.SMS_DELIVERED)
        assert sent["data"]["message_id"] == delivered["data"]["message_id"] == row["id"]
        assert delivered["data"]["provider_sid"] == message["sid"]

    jobs = await eventually(
        lambda: _jobs_when(reminders, b.session_id, 3), what="the reminder jobs"
    )
    assert set(jobs) == {"reminder_24h", "reminder_2h", "followup"}
    assert jobs["reminder_24h"] == pytest.approx((b.start - timedelta(hours=24)).timestamp())
    assert jobs["followup"] == pytest.approx((b.start + timedelta(hours=3)).timestamp())


def events_zone() -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo("America/New_York")


async def _jobs_when(reminders: Reminders, session_id: str, count: int) -> dict[str, float] | None:
    jobs = await reminders.jobs(session_id)
    return jobs if len(jobs) == count else None


async def test_reschedule_moves_the_reminders_and_texts_the_new_time(reminders: Reminders) -> None:
    b = Booking()
    await publish(reminders.nats_url, b.booked())
    await reminders.sandbox.wait_for(b.phone, 1)
    await eventually(lambda: _jobs_when(reminders, b.session_id, 3), what="first plan")

    new_start = b.start + timedelta(days=2, hours=1)
    await publish(reminders.nats_url, b.rescheduled(new_start))
    messages = await reminders.sandbox.wait_for(b.phone, 2)
    moved = next(m for m in messages if "moved to" in m["body"])
    assert new_start.astimezone(events_zone()).strftime("%-I:%M %p") in moved["body"]

    async def moved_jobs() -> dict[str, float] | None:
        jobs = await reminders.jobs(b.session_id)
        due = (new_start - timedelta(hours=24)).timestamp()
        return jobs if jobs.get("reminder_24h") == pytest.approx(due) else None

    jobs = await eventually(moved_jobs, what="reminders moved to the new start")
    assert jobs["reminder_2h"] == pytest.approx((new_start - timedelta(hours=2)).timestamp())
    assert set(jobs) == {"reminder_24h", "reminder_2h", "followup"}


async def test_reminder_carries_the_clients_page_and_r_answers_with_the_newest(
    on_sqlite: Reminders,
) -> None:
    reminders = on_sqlite
    assert (await reminders.put_rules(reminder_rules(-60))).status_code == 200
    b = Booking(start=now() + timedelta(minutes=60, seconds=4))
    link = "https://book.riverside-clinic.example/m/first-token"
    await publish(reminders.nats_url, b.event(events.SESSION_BOOKED, manage_url=link))
    messages = await reminders.sandbox.wait_for(b.phone, 2, timeout=20)
    reminder = next(m for m in messages if m["body"].startswith("Reminder: Maria"))
    assert f"See or change it: {link} " in reminder["body"]
    assert any(link in m["body"] for m in messages if "you're booked" in m["body"])

    newer = "https://book.riverside-clinic.example/m/second-token"
    b.status = "confirmed"
    await publish(reminders.nats_url, b.event(events.SESSION_CONFIRMED, manage_url=newer))

    async def answer_to_r() -> str | None:
        [reply] = (await reminders.sandbox.reply(b.phone, "R"))["replies"]
        return str(reply["body"]) if newer in reply["body"] else None

    body = await eventually(answer_to_r, what="R to answer with the newest page")
    assert "(706) 555-0100" in body and link not in body


async def test_a_renamed_location_is_named_in_the_texts_not_yet_sent(
    on_sqlite: Reminders,
) -> None:
    reminders = on_sqlite
    assert (await reminders.put_rules(reminder_rules(-60))).status_code == 200
    location = RIVERSIDE.model_copy(update={"id": f"loc-{uuid.uuid4().hex[:8]}"})
    b = Booking(start=now() + timedelta(minutes=60, seconds=6), location=location)
    await publish(reminders.nats_url, b.booked())
    [confirmation] = await reminders.sandbox.wait_for(b.phone, 1)
    assert "Riverside Clinic" in confirmation["body"]

    renamed = events.LocationEvent(
        id=location.id,
        name="Riverside North",
        timezone=location.timezone,
        address=location.address,
        phone="+17065550199",
    )
    await publish(
        reminders.nats_url, events.make_event(events.LOCATION_UPDATED, "booking", renamed)
    )
    messages = await reminders.sandbox.wait_for(b.phone, 2, timeout=20)
    reminder = next(m for m in messages if m["body"].startswith("Reminder: Maria"))
    assert "Riverside North" in reminder["body"] and "Riverside Clinic" not in reminder["body"]
    assert "(706) 555-0199" in reminder["body"]


async def test_cancel_sends_nothing_more(on_sqlite: Reminders) -> None:
    reminders = on_sqlite
    assert (await reminders.put_rules(reminder_rules(-60))).status_code == 200
    # Two sessions whose reminders fall due in a few seconds; one is cancelled at once.
    start = now() + timedelta(minutes=60, seconds=4)
    kept, cancelled = Booking(start=start), Booking(start=start)
    await publish(reminders.nats_url, kept.booked(), cancelled.booked())
    await reminders.sandbox.wait_for(cancelled.phone, 1)
    await publish(reminders.nats_url, cancelled.cancelled())

    # The kept session's reminder arriving proves the cancelled one's time came too.
    kept_messages = await reminders.sandbox.wait_for(kept.phone, 2, timeout=20)
    assert any(m["body"].startswith("Reminder: Maria") for m in kept_messages)
    rows = await wait_log(
        reminders.http,
        lambda rows: {r["rule"] for r in rows} >= {"confirmation", "cancellation"},
        session_id=cancelled.session_id,
    )
    assert sorted(r["rule"] for r in rows) == ["cancellation", "confirmation"]
    bodies = [m["body"] for m in await reminders.sandbox.to(cancelled.phone)]
    assert len(bodies) == 2 and any("is cancelled" in body for body in bodies)
    assert await reminders.jobs(cancelled.session_id) == {}


async def test_stop_means_nothing_more_is_sent_to_that_phone(reminders: Reminders) -> None:
    b = Booking()
    await publish(reminders.nats_url, b.booked())
    await reminders.sandbox.wait_for(b.phone, 1, status="delivered")

    async with EventTap(reminders.nats_url, events.CONSENT_CHANGED) as tap:
        answer = await reminders.sandbox.reply(b.phone, "stop")
        assert answer["webhook_status"] == 200
        assert answer["replies"] == [], "Twilio answers STOP itself; one reply, not two"
        change = await tap.wait_for(lambda e: e["data"]["phone"] == b.phone)
        assert change["data"]["sms_consent"] is False

    await publish(reminders.nats_url, b.rescheduled(b.start + timedelta(days=1)))
    rows = await wait_log(
        reminders.http,
        lambda rows: any(r["rule"] == "reschedule" for r in rows),
        session_id=b.session_id,
    )
    skipped = next(r for r in rows if r["rule"] == "reschedule")
    assert skipped["status"] == "skipped" and skipped["reason"] == "opted_out"
    assert len(await reminders.sandbox.to(b.phone)) == 1
    assert not [r for r in await reminders.sandbox.requests_to(b.phone) if r["code"] == 21610], (
        "we never even tried"
    )

    # START opts back in: the next change is texted again.
    await reminders.sandbox.reply(b.phone, "START")
    await publish(reminders.nats_url, b.rescheduled(b.start + timedelta(days=1)))
    await reminders.sandbox.wait_for(b.phone, 2)


SPEC = PROJECT_ROOT.parent / "shared" / "data" / "twilio" / "twilio_api_v2010_messages.json"


async def test_what_reminders_sends_is_in_twilios_spec(on_sqlite: Reminders) -> None:
    if not SPEC.exists():
        pytest.skip(f"Twilio OpenAPI spec not found at {SPEC}")
    spec = json.loads(SPEC.read_text())
    create = spec["paths"]["/2010-04-01/Accounts/{AccountSid}/Messages.json"]["post"]
    schema = create["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    b = Booking()
    await publish(on_sqlite.nats_url, b.booked())
    await on_sqlite.sandbox.wait_for(b.phone, 1)
    [request] = await on_sqlite.sandbox.requests_to(b.phone)
    assert set(request["fields"]) <= set(schema["properties"])
    assert {"To", "From", "Body", "StatusCallback"} <= set(request["fields"])


async def test_rate_limited_once_then_sent_exactly_once(reminders: Reminders) -> None:
    b = Booking()
    await reminders.sandbox.fault(to=b.phone, http_status=429, times=1)
    await publish(reminders.nats_url, b.booked())
    await reminders.sandbox.wait_for(b.phone, 1, status="delivered")
    requests = await reminders.sandbox.requests_to(b.phone)
    assert [r["http_status"] for r in requests] == [429, 201]
    [row] = await log_of(reminders.http, session_id=b.session_id)
    assert row["attempts"] == 2


@pytest.mark.parametrize(
    ("phone", "code"),
    [("+15005550001", 21211), ("+15005550003", 21408), ("+15005550004", 21610)],
)
async def test_permanent_errors_are_recorded_once_and_not_retried(
    on_sqlite: Reminders, phone: str, code: int
) -> None:
    reminders = on_sqlite
    await reminders.sandbox.reset()
    b = Booking(phone=phone)
    async with EventTap(reminders.nats_url, events.SMS_FAILED) as tap:
        await publish(reminders.nats_url, b.booked())
        failed = await tap.wait_for(lambda e: e["data"]["session_id"] == b.session_id)
    assert failed["data"]["error_code"] == code
    [row] = await log_of(reminders.http, session_id=b.session_id)
    assert row["status"] == "failed" and row["error_code"] == code and row["attempts"] == 1
    assert len(await reminders.sandbox.requests_to(phone)) == 1


async def test_delivery_failure_reported_by_callback(on_sqlite: Reminders) -> None:
    reminders = on_sqlite
    b = Booking(phone="+15005553005")
    async with EventTap(reminders.nats_url, events.SMS_FAILED) as tap:
        await publish(reminders.nats_url, b.booked())
        failed = await tap.wait_for(lambda e: e["data"]["session_id"] == b.session_id)
    assert failed["data"]["error_code"] == 30005
    [row] = await wait_log(
        reminders.http,
        lambda rows: rows and rows[0]["status"] == "undelivered",
        session_id=b.session_id,
    )
    assert row["error_code"] == 30005


async def test_a_burst_larger_than_one_scheduler_pass_is_sent_once_each(
    sqlite_database_url: str, nats_url: str, sandbox: Sandbox
) -> None:
    # Five due jobs per pass: the scheduler must come back at once for the rest.
    async for reminders in start_reminders(
        sqlite_database_url, nats_url, sandbox, scheduler_jobs_per_pass=5
    ):
        burst = [Booking() for _ in range(30)]
        await publish(reminders.nats_url, *(b.booked() for b in burst))
        for b in burst:
            assert len(await reminders.sandbox.wait_for(b.phone, 1)) == 1


async def test_jobs_firing_together_each_decide_on_their_own_session(
    reminders: Reminders,
) -> None:
    # Session jobs that fire together read their rows together; each still decides on its
    # own: a text sent already is not sent again, a phone that said STOP and a client who
    # never consented get a row saying why, one not yet due waits, and an unknown session
    # or rule changes nothing.
    app = reminders.runtime.reminders
    sent, stopped, waiting = Booking(), Booking(), Booking()
    refused = Booking(consent=False)
    await publish(
        reminders.nats_url, sent.booked(), stopped.booked(), waiting.booked(), refused.booked()
    )
    for b in (sent, stopped, waiting):
        await reminders.sandbox.wait_for(b.phone, 1, status="delivered")
    assert (await reminders.sandbox.reply(stopped.phone, "stop"))["webhook_status"] == 200

    await asyncio.gather(
        firing.send_session_message(app, sent.session_id, "confirmation"),
        firing.send_session_message(app, stopped.session_id, "reminder_24h"),
        firing.send_session_message(app, refused.session_id, "reminder_24h"),
        firing.send_session_message(app, waiting.session_id, "reminder_24h"),
        firing.send_session_message(app, "no-such-session", "reminder_24h"),
        firing.send_session_message(app, waiting.session_id, "no_such_rule"),
    )

    for b, reason in ((stopped, "opted_out"), (refused, "no_consent")):
        rows = await wait_log(
            reminders.http,
            lambda rows: any(r["rule"] == "reminder_24h" for r in rows),
            session_id=b.session_id,
        )
        dropped = next(r for r in rows if r["rule"] == "reminder_24h")
        assert dropped["status"] == "skipped" and dropped["reason"] == reason
    assert [r["rule"] for r in await log_of(reminders.http, session_id=waiting.session_id)] == [
        "confirmation"
    ]
    jobs = await reminders.jobs(waiting.session_id)
    assert jobs["reminder_24h"] == pytest.approx((waiting.start - timedelta(hours=24)).timestamp())
    for b in (sent, stopped, waiting):
        assert len(await reminders.sandbox.to(b.phone)) == 1
    assert await reminders.sandbox.to(refused.phone) == []
    assert not app.firing


async def test_a_copy_of_a_text_still_being_sent_waits_and_never_sends_twice(
    reminders: Reminders,
) -> None:
    # The queue hands the due text to a second replica while the first is still asking
    # the provider (its in-progress marks could not reach NATS: a node's loss). The
    # second finds the row's send lease held and comes back later; one text reaches her.
    b = Booking()
    await reminders.sandbox.fault(to=b.phone, delay_ms=3000, times=1)
    await publish(reminders.nats_url, b.booked())
    first = reminders.runtime.reminders

    async def being_sent() -> db.Message | None:
        async with first.uow.read() as session:
            row = await session.scalar(
                select(db.Message).where(
                    db.Message.session_id == b.session_id, db.Message.sending_by.is_not(None)
                )
            )
        return row if row is not None and row.status == "submitting" else None

    row = await eventually(being_sent, timeout=10, what="the confirmation being sent")
    second = dataclasses.replace(first, instance="replica-2", in_flight=set(), firing={})
    redelivered = events.make_event(
        events.SMS_DUE, "reminders", events.SmsDue(message_id=row.id), subject=row.id
    )
    with pytest.raises(Deferred) as deferred:
        await transmit.send_due(second, redelivered, delivered=2)
    assert 1 <= deferred.value.seconds <= first.settings.sms_send_lease_seconds + 1
    await reminders.sandbox.wait_for(b.phone, 1, status="delivered")
    await transmit.send_due(second, redelivered, delivered=3)  # settled: nothing to do
    assert len(await reminders.sandbox.to(b.phone)) == 1
    [logged] = await log_of(reminders.http, session_id=b.session_id)
    assert logged["attempts"] == 1


async def test_claims_written_together_lose_only_the_key_already_claimed(
    reminders: Reminders,
) -> None:
    # Claims waiting at the same moment are written together (one flush, one savepoint);
    # a key another claim holds already must not take the others down with it: those
    # texts go out, once each, and the key claimed before is not sent a second time.
    app = reminders.runtime.reminders
    start = app.now() + timedelta(days=30)
    clients = [Booking() for _ in range(5)]

    def planned(b: Booking) -> domain.Planned:
        return domain.Planned(
            rule="bulk",
            kind="reminder",
            key=f"{b.session_id}:bulk",
            due=start,
            run_at=start,
            deadline=start + timedelta(hours=1),
        )

    def to(b: Booking) -> Recipient:
        return Recipient(phone=b.phone, client_id=None)

    first = clients[0]
    assert await claim(app, planned(first), "Your reminder", None, to(first))
    await reminders.sandbox.wait_for(first.phone, 1)
    won = await asyncio.gather(
        *(claim(app, planned(b), "Your reminder", None, to(b)) for b in clients)
    )
    assert won == [False, True, True, True, True]
    for b in clients:
        await reminders.sandbox.wait_for(b.phone, 1, status="delivered")
    for b in clients:
        assert len(await reminders.sandbox.to(b.phone)) == 1


async def test_the_same_event_twice_sends_once(on_sqlite: Reminders) -> None:
    reminders = on_sqlite
    b = Booking()
    booked = b.booked()
    nc = await nats.connect(reminders.nats_url)
    js = nc.jetstream()
    for _ in range(2):  # a republish that JetStream's duplicate window does not catch
        await js.publish(
            booked.type,
            booked.model_dump_json().encode(),
            headers={"Nats-Msg-Id": str(uuid.uuid4())},
        )
    replayed = b.booked()  # the same session again under a new event id
    await nc.close()
    b.version = 1
    await publish(reminders.nats_url, replayed)
    canary = Booking()
    await publish(reminders.nats_url, canary.booked())
    await reminders.sandbox.wait_for(canary.phone, 1)
    await reminders.sandbox.wait_for(b.phone, 1)
    assert len(await reminders.sandbox.to(b.phone)) == 1


# --- replies --------------------------------------------------------------------------


async def test_replies_confirm_reschedule_help_and_unknown(reminders: Reminders) -> None:
    b = Booking()
    await publish(reminders.nats_url, b.booked())
    await reminders.sandbox.wait_for(b.phone, 1)

    async with EventTap(reminders.nats_url, events.REPLY_RECEIVED) as tap:
        answer = await reminders.sandbox.reply(b.phone, "C")
        [ack] = answer["replies"]
        assert ack["body"].startswith("Thanks Maria, you're confirmed for ")
        confirm = await tap.wait_for(lambda e: e["data"]["phone"] == b.phone)
        assert confirm["data"]["intent"] == "confirm"
        assert confirm["data"]["session_id"] == b.session_id
        assert confirm["data"]["client_id"] == b.client_id

        [reply] = (await reminders.sandbox.reply(b.phone, "R"))["replies"]
        assert "(706) 555-0100" in reply["body"]
        await tap.wait_for(lambda e: e["data"]["intent"] == "reschedule")

        [reply] = (await reminders.sandbox.reply(b.phone, "what time is it?"))["replies"]
        assert "Reply C to confirm" in reply["body"]
        await tap.wait_for(lambda e: e["data"]["intent"] == "other")

        [reply] = (await reminders.sandbox.reply(b.phone, "HELP"))["replies"]
        assert "Riverside Clinic" in reply["body"] and "(706) 555-0100" in reply["body"]
        assert "STOP" in reply["body"]

        stranger = "+12125550000"
        [reply] = (await reminders.sandbox.reply(stranger, "C"))["replies"]
        assert "don't recognize this number" in reply["body"]
        # Nothing is announced for the stranger: events leave in order, so once a later
        # reply of Maria's is out, the stranger's would have been too.
        await reminders.sandbox.reply(b.phone, "C")

        async def second_confirm() -> bool:
            return len([e for e in tap.events() if e["data"]["intent"] == "confirm"]) == 2

        await eventually(second_confirm, what="the second confirm")
        assert all(e["data"]["phone"] == b.phone for e in tap.events())

    inbound = [
        r for r in await log_of(reminders.http, phone=b.phone) if r["direction"] == "inbound"
    ]
    assert {r["body"] for r in inbound} >= {"C", "R", "HELP"}


async def test_webhooks_refuse_unsigned_or_badly_signed_requests(reminders: Reminders) -> None:
    b = Booking()
    form = {"MessageSid": "SM" + "1" * 32, "From": b.phone, "To": "+15005550006", "Body": "STOP"}
    url = f"{reminders.url}/twilio/inbound"
    unsigned = await reminders.http.post("/twilio/inbound", data=form)
    assert unsigned.status_code == 403
    wrong = RequestValidator("not-the-token").compute_signature(url, form)
    forged = await reminders.http.post(
        "/twilio/inbound", data=form, headers={"X-Twilio-Signature": wrong}
    )
    assert forged.status_code == 403
    status = await reminders.http.post(
        "/twilio/status", data={"MessageSid": "SMx", "MessageStatus": "delivered"}
    )
    assert status.status_code == 403
    assert await log_of(reminders.http, phone=b.phone) == [], "nothing was recorded"

    good = RequestValidator(SANDBOX_AUTH_TOKEN).compute_signature(url, form)
    signed = await reminders.http.post(
        "/twilio/inbound", data=form, headers={"X-Twilio-Signature": good}
    )
    assert signed.status_code == 200 and signed.text.endswith("<Response></Response>")
    [row] = await log_of(reminders.http, phone=b.phone)
    assert row["direction"] == "inbound"


# --- rules, the log, pages ------------------------------------------------------------


async def test_rules_api_validates_and_replans(reminders: Reminders) -> None:
    defaults = (await reminders.http.get("/v1/rules")).json()
    names = [r["name"] for r in defaults["defaults"]["rules"]]
    assert names == [
        "confirmation",
        "reminder_24h",
        "reminder_2h",
        "followup",
        "cancellation",
        "reschedule",
        "checkin",
        "waitlist_offer",
    ]
    assert (await reminders.http.get("/v1/rules", headers={"Authorization": ""})).status_code == 401

    bad = await reminders.put_rules([{"name": "r", "kind": "reminder", "offset_minutes": 10}])
    assert bad.status_code == 422 and "offset_minutes" in bad.json()["detail"]
    bad = await reminders.put_rules([{"name": "r", "kind": "weekly", "offset_minutes": -10}])
    assert bad.status_code == 422

    b = Booking()
    await publish(reminders.nats_url, b.booked())
    await eventually(lambda: _jobs_when(reminders, b.session_id, 3), what="default plan")
    rules = [r for r in defaults["defaults"]["rules"] if r["name"] != "followup"]
    override = {
        "locations": {
            b.location.id: {
                "rules": [{"name": "reminder_2h", "kind": "reminder", "offset_minutes": -180}],
                "quiet_hours": {"start": "08:00", "end": "21:00"},
            }
        }
    }
    answer = await reminders.put_rules(rules, **override)
    assert answer.status_code == 200, answer.text
    assert answer.json()["locations"][b.location.id]["quiet_hours"] == {
        "start": "08:00",
        "end": "21:00",
    }

    seen: list[dict[str, float]] = []

    async def replanned() -> dict[str, float] | None:
        jobs = await reminders.jobs(b.session_id)
        seen.append(jobs)
        # The confirmation went before the change: no copy of it may wait in the store
        # (in the evening the new quiet hours would hold one until the morning).
        return jobs if set(jobs) == {"reminder_24h", "reminder_2h"} else None

    try:
        jobs = await eventually(replanned, what="the jobs re-planned under the new rules")
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}; the jobs stored: {seen[-1]}") from None
    expected = (b.start - timedelta(hours=3)).timestamp()
    assert jobs["reminder_2h"] >= expected - 1, "moved to 3 h before (or later, for quiet hours)"


async def test_rules_changed_while_the_planner_reads_are_planned_again(
    reminders: Reminders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admin's change that commits between the planner's read of the rules and its read
    of the sessions: the session must not be marked planned under the old rules (on
    PostgreSQL each statement sees what is committed when it starts; the follow-up of
    the old rules stayed in the store)."""
    b = Booking()
    without_followup = [
        r
        for r in (await reminders.http.get("/v1/rules")).json()["defaults"]["rules"]
        if r["name"] != "followup"
    ]
    read_rules = planning.load_rules
    changed: list[int] = []

    async def rules_then_a_change(session: Any, settings: Any) -> Any:
        rules = await read_rules(session, settings)
        if not changed:
            changed.append((await reminders.put_rules(without_followup)).status_code)
        return rules

    monkeypatch.setattr(planning, "load_rules", rules_then_a_change)
    await publish(reminders.nats_url, b.booked())

    async def planned_under_the_new_rules() -> dict[str, float] | None:
        jobs = await reminders.jobs(b.session_id)
        return jobs if changed and set(jobs) == {"reminder_24h", "reminder_2h"} else None

    await eventually(planned_under_the_new_rules, what="the follow-up dropped by the change")
    assert changed == [200]


async def test_followup_links_to_the_aftercare_page(on_sqlite: Reminders) -> None:
    reminders = on_sqlite
    ended = Booking(start=now() - timedelta(hours=3))  # ended two hours ago
    await publish(reminders.nats_url, ended.booked())
    [message] = await reminders.sandbox.wait_for(ended.phone, 1)
    assert "aftercare" in message["body"]
    link = next(word for word in message["body"].split() if "/a/" in word)
    assert link.startswith(reminders.url)
    page = await reminders.http.get(link)
    assert page.status_code == 200
    assert "lymphatic drainage" in page.text.lower() and "calf" in page.text
    assert "shortness of breath" in page.text and "tel:+17065550100" in page.text

    # The confirmation was dropped, and logged: the session had already started.
    rows = await wait_log(
        reminders.http,
        lambda rows: [r["status"] for r in rows if r["rule"] == "followup"] == ["delivered"],
        session_id=ended.session_id,
    )
    late = {r["rule"]: (r["status"], r["reason"]) for r in rows}["confirmation"]
    assert late == ("skipped", "too_late")

    tampered = await reminders.http.get(link[:-3] + "abc")
    assert tampered.status_code == 404
    settings = reminders.runtime.settings
    old = Links(settings.reminders_link_secret, reminders.url, 60, clock=lambda: 0.0)
    expired = await reminders.http.get(f"/a/{old.token(AFTERCARE, ended.session_id)}")
    assert expired.status_code == 410


async def test_referral_update_is_a_neutral_text_with_a_link(on_sqlite: Reminders) -> None:
    reminders = on_sqlite
    b = Booking(first_name="Dana")
    await publish(reminders.nats_url, b.client_event())
    referral = events.make_event(
        events.referral_subject("accepted"),
        "referrals",
        events.ReferralEvent(
            referral_id=str(uuid.uuid4()),
            plan_id="p1",
            client_id=b.client_id,
            partner=events.PartnerRef(id="partner-1", discipline="physical_therapy"),
            status="accepted",
        ),
    )
    await publish(reminders.nats_url, referral)
    [message] = await reminders.sandbox.wait_for(b.phone, 1)
    body = message["body"]
    assert body.startswith("Hi Dana") and "/r/" in body
    assert "physical" not in body.lower() and "partner" not in body.lower()
    link = next(word for word in body.split() if "/r/" in word)
    page = await reminders.http.get(link)
    assert page.status_code == 200 and "physical therapy" in page.text


async def test_a_referral_for_an_unknown_client_is_dead_lettered(on_sqlite: Reminders) -> None:
    reminders = on_sqlite
    referral = events.make_event(
        events.referral_subject("scheduled"),
        "referrals",
        events.ReferralEvent(
            referral_id=str(uuid.uuid4()),
            plan_id="p1",
            client_id="nobody",
            partner=events.PartnerRef(id="partner-1", discipline="acupuncture"),
            status="scheduled",
        ),
    )
    async with EventTap(
        reminders.nats_url, events.dlq_subject(events.REFERRALS_STREAM, "reminders-referrals")
    ) as tap:
        await publish(reminders.nats_url, referral)
        parked = await tap.wait_for(lambda e: e["id"] == referral.id)
    assert parked["data"]["client_id"] == "nobody"
    headers = tap.messages[-1].headers or {}
    assert "ClientUnknown" in headers.get("Dlq-Error", "")


async def test_front_desk_filters_and_a_key_is_needed(reminders: Reminders) -> None:
    b = Booking()
    await publish(reminders.nats_url, b.booked())
    await reminders.sandbox.wait_for(b.phone, 1)
    national = b.phone.removeprefix("+1")
    rows = await log_of(reminders.http, phone=national)
    assert [r["phone"] for r in rows] == [b.phone]
    bad = await reminders.http.get("/v1/messages", params={"phone": "12"})
    assert bad.status_code == 422
    anonymous = await reminders.http.get("/v1/messages", headers={"Authorization": ""})
    assert anonymous.status_code == 401
