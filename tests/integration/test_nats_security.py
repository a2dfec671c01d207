"""NATS users against a real nats-server running the generated configuration: strangers
are refused, a service publishes only its own subjects, the observer only listens, and the
services still do everything they need (streams, consumers, dead letters, leases)."""

from __future__ import annotations

import asyncio
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import pytest
import pytest_asyncio

from services.booking.app import create_app as create_booking
from services.reminders.app import create_app as create_reminders
from services.reminders.pacing import PACE_BUCKET, pace_key
from shared import events
from shared.broker import ensure_streams
from shared.lease import Lease
from shared.natsauth import ADMIN, OBSERVER, Credentials, parse_servers, redact
from shared.natsd import EmbeddedNats, free_port
from shared.settings import ServiceSettings
from tests.integration.test_booking_api import make_clinic, next_monday_at, session_body
from tests.integration.test_booking_api import settings_for as booking_settings
from tests.reminders_support import (
    Sandbox,
    running_sandbox,
    settings_for,
    wait_active,
)
from tests.support import AUTH, eventually, serve, sqlite_url, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Secured:
    def __init__(self, server: EmbeddedNats, credentials: Credentials) -> None:
        self.server = server
        self.credentials = credentials

    def url(self, user: str) -> str:
        return self.credentials.url(user, [self.server.url])


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    directory = tmp_path_factory.mktemp("nats-secured")
    credentials = Credentials.load_or_create(directory)
    server = EmbeddedNats(directory, port=free_port(), credentials=credentials).start()
    yield Secured(server, credentials)
    server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def admin(secured: Secured) -> AsyncIterator[Any]:
    nc = await nats.connect(secured.url(ADMIN))
    await ensure_streams(nc.jetstream())
    yield nc
    await nc.close()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as running:
        yield running


class Errors:
    """What the server told a connection (permission violations arrive asynchronously)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, error: Exception) -> None:
        self.seen.append(str(error))

    async def wait_for(self, words: str) -> None:
        async def seen() -> bool:
            return any(words.lower() in e.lower() for e in self.seen)

        await eventually(seen, what=f"the server to say {words!r}")


async def refused(url: str) -> str:
    """Connect once, no retries; the server's refusal."""
    with pytest.raises((nats.errors.Error, OSError)) as refusal:
        await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    return str(refusal.value).lower()


async def test_anonymous_and_wrong_passwords_are_refused(secured: Secured) -> None:
    assert "authorization violation" in await refused(secured.server.url)
    wrong = f"nats://booking:guessed@127.0.0.1:{secured.server.port}"
    assert "authorization violation" in await refused(wrong)


async def test_a_service_cannot_publish_another_services_subject(
    secured: Secured, admin: Any
) -> None:
    errors = Errors()
    booking = await nats.connect(secured.url("booking"), error_cb=errors.record)
    js = booking.jetstream()
    forged = events.make_event(
        events.REPLY_RECEIVED,
        "reminders",
        events.ReplyReceived(phone="+12125550100", client_id=None, intent="confirm"),  # type: ignore[arg-type]
    )
    before = (await admin.jetstream().stream_info(events.REMINDERS_STREAM)).state.messages
    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await js.publish(events.REPLY_RECEIVED, forged.model_dump_json().encode(), timeout=1)
    await errors.wait_for(f'Permissions Violation for Publish to "{events.REPLY_RECEIVED}"')
    after = (await admin.jetstream().stream_info(events.REMINDERS_STREAM)).state.messages
    assert after == before, "the forged reply reached the REMINDERS stream"

    # Its own subjects and dead letters are fine.
    ack = await js.publish(
        events.SESSION_BOOKED, b"{}", headers={"Nats-Msg-Id": str(uuid.uuid4())}, timeout=5
    )
    assert ack.stream == events.BOOKING_STREAM
    # Destroying another's data is not among what JetStream needs.
    with pytest.raises(nats.errors.Error):
        await js.purge_stream(events.REMINDERS_STREAM)
    await booking.close()


async def test_a_service_cannot_take_another_services_lease(secured: Secured, admin: Any) -> None:
    booking = await nats.connect(secured.url("booking"))
    with pytest.raises((nats.errors.Error, TimeoutError)):
        await Lease(booking.jetstream(), key="reminders-scheduler", ttl_seconds=2).try_acquire()
    await booking.close()

    reminders = await nats.connect(secured.url("reminders"))
    lease = Lease(reminders.jetstream(), key="reminders-scheduler", ttl_seconds=2)
    assert await lease.try_acquire()
    assert await lease.renew()
    await lease.release()
    await reminders.close()


async def test_the_observer_hears_every_event_and_publishes_nothing(
    secured: Secured, admin: Any
) -> None:
    errors = Errors()
    observer = await nats.connect(secured.url(OBSERVER), error_cb=errors.record)
    heard: asyncio.Queue[Any] = asyncio.Queue()

    async def on_message(msg: Any) -> None:
        await heard.put(msg)

    for subject in ("booking.>", "reminders.>", "referrals.>", "dlq.>"):
        await observer.subscribe(subject, cb=on_message)
    await observer.flush()

    booking = await nats.connect(secured.url("booking"))
    await booking.jetstream().publish(
        events.SESSION_BOOKED, b"{}", headers={"Nats-Msg-Id": str(uuid.uuid4())}
    )
    message = await asyncio.wait_for(heard.get(), timeout=5)
    assert message.subject == events.SESSION_BOOKED
    await booking.close()

    await observer.publish(events.SESSION_BOOKED, b"{}")
    await errors.wait_for("Permissions Violation for Publish")
    with pytest.raises((nats.errors.Error, TimeoutError)):
        await observer.jetstream(timeout=1).stream_info(events.BOOKING_STREAM)
    await observer.close()


async def test_booking_and_reminders_do_all_they_need_as_their_own_users(
    tmp_path: Path, secured: Secured, admin: Any, sandbox: Sandbox
) -> None:
    """Streams, consumers, outbox, lease, dead letters, each as its own user: a booking is
    texted, the client's C confirms the session at booking, and a malformed reply is parked."""
    booking_app = create_booking(
        booking_settings(sqlite_url(tmp_path, "booking"), secured.url("booking"))
    )
    port = free_port()
    # A rate limit: the pace of the sender is shared through NATS KV, as reminders' user.
    reminders_settings = settings_for(
        sqlite_url(tmp_path, "reminders"),
        secured.url("reminders"),
        sandbox.url,
        port,
        sms_rate_per_second=20,
    )
    reminders_app = create_reminders(reminders_settings)
    async with (
        serve(booking_app) as booking_url,
        serve(reminders_app, port) as reminders_url,
    ):
        sandbox.point_inbound_at(reminders_url)
        await wait_ready(booking_url)
        await wait_active(reminders_app)
        async with httpx.AsyncClient(base_url=booking_url, headers=AUTH, timeout=30) as front:
            document = (await front.get("/asyncapi.json")).text
            assert secured.credentials.passwords["booking"] not in document

            clinic = await make_clinic(front)
            phone = clinic["client"]["phone"]
            booked = await front.post("/v1/sessions", json=session_body(clinic, next_monday_at(10)))
            assert booked.status_code == 201, booked.text
            await sandbox.wait_for(phone, 1, status="delivered", timeout=30)
            await sandbox.reply(phone, "C")

            async def confirmed() -> bool:
                session = (await front.get(f"/v1/sessions/{booked.json()['id']}")).json()
                return bool(session["status"] == "confirmed")

            await eventually(confirmed, timeout=20, what="booking to confirm the session")

        paces = await admin.jetstream().key_value(PACE_BUCKET)
        assert (await paces.get(pace_key(reminders_settings.sender))).value, "the shared pace"

        # A reply reminders could publish but booking cannot read: booking parks it.
        reminders_nc = await nats.connect(secured.url("reminders"))
        await reminders_nc.jetstream().publish(
            events.REPLY_RECEIVED, b"not an event", headers={"Nats-Msg-Id": str(uuid.uuid4())}
        )
        await reminders_nc.close()
        js = admin.jetstream()

        async def parked() -> bool:
            try:
                info = await js.stream_info(events.DLQ_STREAM, subjects_filter="dlq.>")
            except nats.errors.Error:
                return False
            return any("booking" in s for s in (info.state.subjects or {}))

        await eventually(parked, timeout=20, what="booking's dead letter")


async def test_make_run_creates_private_users_once(tmp_path: Path, monkeypatch: Any) -> None:
    from tools.run import start_nats

    port = free_port()
    monkeypatch.setenv("NATS_URL", f"nats://127.0.0.1:{port}")
    server, urls = start_nats(tmp_path)
    assert server is not None
    try:
        nats_dir = tmp_path / "nats"
        for name in ("users.json", "nats.conf", "observer.url", "booking.url"):
            assert stat.S_IMODE((nats_dir / name).stat().st_mode) == 0o600, name
        observer = parse_servers((nats_dir / "observer.url").read_text().strip())
        assert observer.user == OBSERVER and observer.urls == [f"nats://127.0.0.1:{port}"]
        assert {parse_servers(url).user for url in urls.values()} == set(urls)
        nc = await nats.connect(urls["booking"])
        await nc.close()
    finally:
        server.stop()
    again = Credentials.load_or_create(tmp_path / "nats")
    assert again.url("booking", [f"nats://127.0.0.1:{port}"]) == urls["booking"]


async def test_production_refuses_the_development_nats_default() -> None:
    with pytest.raises(ValueError, match="NATS_URL"):
        ServiceSettings(app_env="production", admin_api_key="a-real-secret")
    ok = ServiceSettings(
        app_env="production",
        admin_api_key="a-real-secret",
        nats_url="nats://booking:pw@nats-1:4222,nats://booking:pw@nats-2:4222",
    )
    assert ok.app_env == "production"


async def test_credentials_stay_out_of_logs_and_server_lists() -> None:
    url = "nats://booking:s3cret@a:4222, nats://booking:s3cret@b:4223"
    servers = parse_servers(url)
    assert servers.urls == ["nats://a:4222", "nats://b:4223"]
    assert (servers.user, servers.password) == ("booking", "s3cret")
    assert "s3cret" not in redact(url) and "booking" in redact(url)
