"""Delivery guarantees against a real nats-server: outbox while NATS is down, DLQ, retries,
and booking's consumers applying each event once."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import pytest_asyncio
from faststream.nats import NatsBroker
from sqlalchemy import Column, MetaData, String, Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.booking.app import create_app
from shared import events
from shared.broker import BROKER_LOGGER, ensure_streams, jetstream, make_broker
from shared.consumers import (
    Consumer,
    QuietPullSubscriber,
    ensure_consumer,
    register_consumer,
)
from shared.db import create_engine, transaction
from shared.inbox import add_inbox_table, inbox
from shared.natsd import EmbeddedNats, free_port
from shared.uow import UnitOfWork
from tests.integration.test_booking_api import (
    make_clinic,
    next_monday_at,
    session_body,
    settings_for,
)
from tests.support import AUTH, EventTap, eventually, serve, sqlite_url, wait_ready
from tools.kit.events import reply_event

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def publish_event(
    nats_url: str, event: events.CloudEvent[Any] | bytes, subject: str | None = None
) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    if isinstance(event, bytes):
        await js.publish(subject or "", event, headers={"Nats-Msg-Id": str(uuid.uuid4())})
    else:
        await js.publish(
            event.type, event.model_dump_json().encode(), headers={"Nats-Msg-Id": str(uuid.uuid4())}
        )
    await nc.close()


async def dlq_messages(nats_url: str, subject: str) -> list[Any]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(subject, stream=events.DLQ_STREAM)
    try:
        msgs = await sub.fetch(100, timeout=0.5)
    except nats.errors.TimeoutError:
        msgs = []
    await sub.unsubscribe()
    await nc.close()
    return msgs


async def test_an_event_written_while_nats_is_down_leaves_when_it_is_back(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", port=free_port()).start()
    app = create_app(settings_for(sqlite_url(tmp_path), server.url))
    try:
        async with serve(app) as base_url:
            await wait_ready(base_url)
            async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=30) as client:
                clinic = await make_clinic(client)
                server.stop()
                booked = await client.post(
                    "/v1/sessions", json=session_body(clinic, next_monday_at(10))
                )
                assert booked.status_code == 201, "the write must succeed while NATS is down"
                assert (await client.get("/readyz")).status_code == 503
                server.start()
                async with EventTap(server.url, events.SESSION_BOOKED) as tap:
                    await tap.wait_for(
                        lambda e: e["data"]["session_id"] == booked.json()["id"], timeout=30
                    )
                    # Deliver-new tap: make sure it is the stored message, once, in the stream.
                nc = await nats.connect(server.url)
                stored = await nc.jetstream().get_last_msg(
                    events.BOOKING_STREAM, events.SESSION_BOOKED
                )
                await nc.close()
                assert json.loads(stored.data)["data"]["session_id"] == booked.json()["id"]
    finally:
        server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def booking_app(
    sqlite_database_url: str, nats_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(settings_for(sqlite_database_url, nats_url))
    async with serve(app) as base_url:
        await wait_ready(base_url)
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=30) as client:
            yield client, app


async def test_a_malformed_event_goes_to_the_dlq_and_the_consumer_goes_on(
    booking_app: Any, nats_url: str
) -> None:
    client, _app = booking_app
    clinic = await make_clinic(client)
    session = (
        await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
    ).json()

    await publish_event(nats_url, b'{"this is": "not a cloudevent"', subject=events.REPLY_RECEIVED)
    parked = await eventually(
        lambda: dlq_messages(nats_url, "dlq.REMINDERS.booking-replies"),
        what="the malformed event in the DLQ",
    )
    assert parked[0].data == b'{"this is": "not a cloudevent"'
    assert "malformed" in parked[0].headers["Dlq-Error"]
    assert parked[0].headers["Dlq-Original-Subject"] == events.REPLY_RECEIVED

    async with EventTap(nats_url, events.SESSION_CONFIRMED) as tap:
        await publish_event(nats_url, reply_event("+12125550199"))
        confirmed = await tap.wait_for(lambda e: e["data"]["session_id"] == session["id"])
    assert confirmed["data"]["status"] == "confirmed"
    assert (await client.get(f"/v1/sessions/{session['id']}")).json()["status"] == "confirmed"


async def test_a_redelivered_reply_is_applied_once(booking_app: Any, nats_url: str) -> None:
    client, _app = booking_app
    clinic = await make_clinic(client)
    first = (
        await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
    ).json()
    second = (
        await client.post("/v1/sessions", json=session_body(clinic, next_monday_at(12)))
    ).json()
    reply = reply_event("+12125550199", client_id=clinic["client"]["id"])
    async with EventTap(nats_url, events.SESSION_CONFIRMED) as tap:
        await publish_event(nats_url, reply)
        await tap.wait_for(lambda e: e["data"]["session_id"] == first["id"])
        await publish_event(nats_url, reply)  # same event id, new message: the inbox drops it
        marker = reply_event("+10000000000")
        await publish_event(nats_url, marker)
        await eventually(
            lambda: _consumer_caught_up(nats_url, "booking-replies"),
            what="the consumer to catch up",
        )
    assert (await client.get(f"/v1/sessions/{second['id']}")).json()["status"] == "booked"
    assert (await client.get(f"/v1/sessions/{first['id']}")).json()["version"] == 2


async def _consumer_caught_up(nats_url: str, durable: str) -> bool:
    nc = await nats.connect(nats_url)
    info = await nc.jetstream().consumer_info(events.REMINDERS_STREAM, durable)
    await nc.close()
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_stop_from_a_phone_withdraws_consent_for_its_clients(
    booking_app: Any, nats_url: str
) -> None:
    client, _app = booking_app
    clinic = await make_clinic(client)
    change = events.make_event(
        events.CONSENT_CHANGED,
        "reminders",
        events.ConsentChanged(phone="+12125550199", sms_consent=False, source="STOP"),
    )
    async with EventTap(nats_url, events.CLIENT_UPDATED) as tap:
        await publish_event(nats_url, change)
        updated = await tap.wait_for(lambda e: e["data"]["client"]["id"] == clinic["client"]["id"])
    assert updated["data"]["client"]["sms_consent"] is False
    row = (await client.get(f"/v1/clients/{clinic['client']['id']}")).json()
    assert row["sms_consent"] is False and row["sms_consent_source"] == "sms:STOP"


async def test_a_consent_change_arriving_after_a_later_one_is_ignored(
    booking_app: Any, nats_url: str
) -> None:
    """STOP at 10:00:05, then a START from 10:00:00 that comes late (retried, or published
    again after a failure): the client stays opted out, as they last asked."""
    client, _app = booking_app
    clinic = await make_clinic(client)
    phone = "+12125550199"  # the clinic's client
    stop = events.make_event(
        events.CONSENT_CHANGED,
        "reminders",
        events.ConsentChanged(phone=phone, sms_consent=False, source="STOP"),
    )
    late_start = events.make_event(
        events.CONSENT_CHANGED,
        "reminders",
        events.ConsentChanged(phone=phone, sms_consent=True, source="START"),
    ).model_copy(update={"time": stop.time - timedelta(seconds=5)})
    async with EventTap(nats_url, events.CLIENT_UPDATED) as tap:
        await publish_event(nats_url, stop)
        await tap.wait_for(lambda e: e["data"]["client"]["id"] == clinic["client"]["id"])
    await publish_event(nats_url, late_start)
    await eventually(
        lambda: _consumer_caught_up(nats_url, "booking-consent"),
        what="the consent consumer to take the late START",
    )
    row = (await client.get(f"/v1/clients/{clinic['client']['id']}")).json()
    assert row["sms_consent"] is False and row["sms_consent_source"] == "sms:STOP"


# -- the shared consumer plumbing, with a handler we control ---------------------------

_metadata = MetaData()
applied = Table("applied", _metadata, Column("event_id", String(64), primary_key=True))
add_inbox_table(_metadata)


@pytest_asyncio.fixture(loop_scope="session")
async def flaky_consumer(
    tmp_path: Path, nats_url: str
) -> AsyncIterator[tuple[Consumer, Any, dict[str, int]]]:
    engine = create_engine(sqlite_url(tmp_path, "flaky"))
    async with engine.begin() as conn:
        await conn.run_sync(_metadata.create_all)
    uow = UnitOfWork(engine)
    sessions = uow.sessions
    failures: dict[str, int] = {}

    async def handler(session: AsyncSession, event: events.CloudEvent[Any]) -> None:
        await session.execute(insert(applied).values(event_id=event.id))
        if failures.get(event.data.phone, 0) > 0:
            failures[event.data.phone] -= 1
            raise RuntimeError("partner system is down")

    purpose = f"flaky{uuid.uuid4().hex[:8]}"
    consumer = Consumer(
        service="test",
        purpose=purpose,
        stream=events.REMINDERS_STREAM,
        subject=events.REPLY_RECEIVED,
        handler=handler,
        max_deliver=3,
        retry_base_seconds=0.05,
    )
    broker: NatsBroker = make_broker(nats_url, "test")
    register_consumer(broker, consumer, uow)
    await broker.connect()
    await ensure_streams(jetstream(broker))
    await ensure_consumer(jetstream(broker), consumer)
    await broker.start()
    yield consumer, sessions, failures
    await broker.stop()
    await engine.dispose()


async def _applied_ids(sessions: Any) -> set[str]:
    async with transaction(sessions) as session:
        return set(await session.scalars(select(applied.c.event_id)))


async def test_a_failing_handler_is_retried_then_applied_once(
    flaky_consumer: Any, nats_url: str
) -> None:
    consumer, sessions, failures = flaky_consumer
    failures["+12125550001"] = 2  # fails twice, succeeds on the third and last delivery
    event = reply_event("+12125550001")
    await publish_event(nats_url, event)
    await eventually(lambda: _has(sessions, event.id), what="the event to be applied after retries")
    assert await _consumer_caught_up_on(nats_url, consumer)
    assert consumer.dead_lettered == []


async def test_a_handler_failing_every_time_ends_in_the_dlq(
    flaky_consumer: Any, nats_url: str
) -> None:
    consumer, sessions, failures = flaky_consumer
    failures["+12125550002"] = 99
    event = reply_event("+12125550002")
    await publish_event(nats_url, event)
    parked = await eventually(
        lambda: dlq_messages(nats_url, f"dlq.REMINDERS.{consumer.durable}"),
        what="the event in the DLQ",
    )
    assert json.loads(parked[0].data)["id"] == event.id
    assert "partner system is down" in parked[0].headers["Dlq-Error"]
    assert event.id not in await _applied_ids(sessions)
    # The consumer is still alive: the next good event is applied.
    good = reply_event("+12125550003")
    await publish_event(nats_url, good)
    await eventually(lambda: _has(sessions, good.id), what="the next event after a dead letter")


async def _has(sessions: Any, event_id: str) -> bool:
    return event_id in await _applied_ids(sessions)


async def _consumer_caught_up_on(nats_url: str, consumer: Consumer) -> bool:
    return await eventually(lambda: _consumer_caught_up(nats_url, consumer.durable), what="ack")


async def test_a_fetched_batch_shares_one_transaction_and_a_poison_event_spoils_none(
    tmp_path: Path, nats_url: str
) -> None:
    """Events fetched together are applied in one transaction; one whose handler fails
    every time ends in the DLQ on its own while its batch-mates are applied, once each,
    without waiting for its retries."""
    engine = create_engine(sqlite_url(tmp_path, "batch"))
    async with engine.begin() as conn:
        await conn.run_sync(_metadata.create_all)
    uow = UnitOfWork(engine)
    poison_phone = "+12125550099"
    transactions: dict[str, int] = {}
    numbers = itertools.count()

    async def handler(session: AsyncSession, event: events.CloudEvent[Any]) -> None:
        await session.execute(insert(applied).values(event_id=event.id))
        if event.data.phone == poison_phone:
            raise RuntimeError("cannot apply this one")
        transactions[event.id] = session.info.setdefault("test.tx", next(numbers))

    consumer = Consumer(
        service="test",
        purpose=f"batch{uuid.uuid4().hex[:8]}",
        stream=events.REMINDERS_STREAM,
        subject=events.REPLY_RECEIVED,
        handler=handler,
        max_deliver=3,
        retry_base_seconds=0.05,
        batch_size=256,  # every stored reply in one fetch, the other tests' too
    )
    good = [reply_event(f"+1212555{1000 + i}") for i in range(7)]
    poison = reply_event(poison_phone)
    broker: NatsBroker = make_broker(nats_url, "test")
    register_consumer(broker, consumer, uow)
    await broker.connect()
    await ensure_streams(jetstream(broker))
    for event in [*good[:3], poison, *good[3:]]:  # stored before the consumer starts
        await publish_event(nats_url, event)
    await ensure_consumer(jetstream(broker), consumer)
    await broker.start()
    try:
        want = {e.id for e in good}
        await eventually(
            lambda: _all_applied(uow.sessions, want), what="the poison's batch-mates applied"
        )
        parked = await eventually(
            lambda: dlq_messages(nats_url, f"dlq.REMINDERS.{consumer.durable}"),
            what="the poison event in the DLQ",
        )
        assert [json.loads(m.data)["id"] for m in parked] == [poison.id]
        assert poison.id not in await _applied_ids(uow.sessions)
        # The seven shared one transaction (two at most, should a fetch split them).
        assert len({transactions[e.id] for e in good}) <= 2
        assert await _consumer_caught_up_on(nats_url, consumer)
        async with transaction(uow.sessions) as session:
            claimed = list(
                await session.scalars(
                    select(inbox.c.event_id).where(inbox.c.consumer == consumer.durable)
                )
            )
        assert sorted(e for e in claimed if e in want) == sorted(want)  # once each
    finally:
        await broker.stop()
        await engine.dispose()


async def _all_applied(sessions: Any, want: set[str]) -> bool:
    return want <= await _applied_ids(sessions)


async def test_changed_consumer_config_is_applied_on_start(nats_url: str) -> None:
    broker = make_broker(nats_url, "test")
    await broker.connect()
    js = jetstream(broker)
    await ensure_streams(js)

    async def noop(_s: AsyncSession, _e: events.CloudEvent[Any]) -> None:
        return None

    name = f"cfg{uuid.uuid4().hex[:8]}"
    old = Consumer(
        "test",
        name,
        events.REMINDERS_STREAM,
        events.REPLY_RECEIVED,
        noop,
        max_deliver=3,
        ack_wait_seconds=30,
    )
    await ensure_consumer(js, old)
    new = Consumer(
        "test",
        name,
        events.REMINDERS_STREAM,
        events.REPLY_RECEIVED,
        noop,
        max_deliver=7,
        ack_wait_seconds=12,
    )
    await ensure_consumer(js, new)
    info = await js.consumer_info(events.REMINDERS_STREAM, new.durable)
    await broker.stop()
    assert info.config.max_deliver == 7
    assert info.config.ack_wait == 12


# -- quiet at idle: no traceback, no line per message or poll --------------------------


async def test_a_pull_ending_in_the_builtin_timeout_error_is_no_error(
    tmp_path: Path, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """nats-py's fetch lets the built-in TimeoutError out when a pull's deadline runs out
    between its two requests (PITFALLS); FastStream would log a traceback and restart the
    pull task. Forced here three times: the same task pulls on, nothing is logged."""
    engine = create_engine(sqlite_url(tmp_path, "quiet"))
    async with engine.begin() as conn:
        await conn.run_sync(_metadata.create_all)
    seen: list[str] = []

    async def handler(_session: AsyncSession, event: events.CloudEvent[Any]) -> None:
        seen.append(event.id)

    consumer = Consumer(
        service="test",
        purpose=f"quiet{uuid.uuid4().hex[:8]}",
        stream=events.REMINDERS_STREAM,
        subject=events.REPLY_RECEIVED,
        handler=handler,
        payload=events.ReplyReceived,
    )
    broker = make_broker(nats_url, "test")
    register_consumer(broker, consumer, UnitOfWork(engine))
    (subscriber,) = broker.subscribers
    assert isinstance(subscriber, QuietPullSubscriber)
    caplog.set_level(logging.DEBUG, logger=BROKER_LOGGER.name)
    await broker.connect()
    await ensure_streams(jetstream(broker))
    await ensure_consumer(jetstream(broker), consumer)
    await broker.start()
    try:
        pull = subscriber.subscription
        assert pull is not None
        real_fetch, raised = pull.fetch, []

        async def fetch(*args: Any, **kwargs: Any) -> Any:
            if len(raised) < 3:
                raised.append(1)
                raise TimeoutError  # nats-py's `raise asyncio.TimeoutError` in _fetch_n
            return await real_fetch(*args, **kwargs)

        loops = list(subscriber.tasks)
        pull.fetch = fetch  # type: ignore[method-assign]

        async def timed_out_thrice() -> bool:
            return len(raised) == 3

        await eventually(timed_out_thrice, what="three pulls ending in TimeoutError")
        event = reply_event("+12125550123")
        await publish_event(nats_url, event)

        async def applied_it() -> bool:
            return event.id in seen

        await eventually(applied_it, what="the next event, pulled by the same loop")
        assert subscriber.tasks == loops, "the pull task was restarted"
        noisy = [r for r in caplog.records if r.levelno >= logging.INFO]
        assert not noisy, [r.getMessage()[:100] for r in noisy]
        # Fetched messages bypass FastStream's per-message pipeline: no line at any level.
        assert not {r.getMessage() for r in caplog.records} & {"Received", "Processed"}
    finally:
        await broker.stop()
        await engine.dispose()


SERVICES = ("booking", "reminders", "referrals")
#: Long enough that the pull loops of the eight consumers run through several timeouts.
IDLE_SECONDS = 6.0


async def test_running_services_at_idle_print_nothing(tmp_path: Path, nats_url: str) -> None:
    """Each service as `python -m services.<name>` at the default LOG_LEVEL: once started,
    a few seconds of idle print no line, and nothing ever prints a traceback."""
    procs: dict[str, tuple[subprocess.Popen[bytes], Path, int]] = {}
    for service in SERVICES:
        port, out = free_port(), tmp_path / f"{service}.out"
        env = {
            **os.environ,
            "NATS_URL": nats_url,
            "VAR_DIR": str(tmp_path / "var"),
            f"{service.upper()}_PORT": str(port),
            f"{service.upper()}_DATABASE_URL": sqlite_url(tmp_path, service),
        }
        env.pop("LOG_LEVEL", None)
        with out.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", f"services.{service}"],
                cwd=Path(__file__).resolve().parents[2],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        procs[service] = (process, out, port)
    try:
        for _process, _out, port in procs.values():
            await wait_ready(f"http://127.0.0.1:{port}", timeout=180)  # a busy machine
        sizes = {service: -1 for service in procs}

        async def settled() -> bool:
            """Start-up lines (lease taken, scheduler active) have stopped coming."""
            now = {s: out.stat().st_size for s, (_p, out, _port) in procs.items()}
            if now == sizes:
                return True
            sizes.update(now)
            await asyncio.sleep(1.0)
            return False

        await eventually(settled, timeout=120, what="the services to finish starting")
        # The claim is about silence over time: watch for a while (no event to wait for).
        await asyncio.sleep(IDLE_SECONDS)
        for service, (_process, out, _port) in procs.items():
            idle = out.read_bytes()[sizes[service] :].decode(errors="replace")
            assert idle == "", f"{service} printed at idle:\n{idle[:2000]}"
    finally:
        for process, _out, _port in procs.values():
            process.terminate()
        for process, _out, _port in procs.values():
            process.wait(timeout=30)
    for service, (_process, out, _port) in procs.items():
        text = out.read_text(errors="replace")
        assert "Traceback" not in text and "ERROR" not in text, f"{service}:\n{text[-3000:]}"
