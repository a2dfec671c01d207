"""The Twilio sandbox, driven by the real ``twilio`` client and held to Twilio's OpenAPI spec.

The sandbox and a small receiver (status callbacks and the inbound webhook) run in-process
on free ports. Waits are on a condition with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import jsonschema
import pytest
from fastapi import FastAPI, Request, Response
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from tools.twilio_sandbox import SandboxSettings, create_app, sandbox_client, serve_in_thread
from tools.twilio_sandbox.sandbox import AUTO_REPLIES

ACCOUNT = "AC" + "a1" * 16
TOKEN = "integration-test-token"
SENDER = "+15005550006"
SERVICE = "MG" + "b2" * 16
TWIML_ANSWER = "Thanks, you're confirmed"

REPO = Path(__file__).resolve().parents[2]
SPEC_PATH = Path(
    os.environ.get(
        "TWILIO_MESSAGES_SPEC",
        REPO.parent / "shared" / "data" / "twilio" / "twilio_api_v2010_messages.json",
    )
)
LIST_PATH = "/2010-04-01/Accounts/{AccountSid}/Messages.json"
ITEM_PATH = "/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json"


# --- a receiver for status callbacks and the inbound webhook ------------------------------


@dataclass
class Hit:
    path: str
    url: str
    params: dict[str, str]
    signature: str | None
    answered: int


@dataclass
class Receiver:
    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    #: path -> how many more requests to answer with 503 (the receiver "is down").
    fail_first: dict[str, int] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/{path:path}")
        async def hook(path: str, request: Request) -> Response:
            params = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
            with self.cond:
                failing = self.fail_first.get(path, 0)
                if failing:
                    self.fail_first[path] = failing - 1
                answer = 503 if failing else 200 if path == "inbound" else 204
                self.hits.append(
                    Hit(
                        path,
                        str(request.url),
                        params,
                        request.headers.get("x-twilio-signature"),
                        answer,
                    )
                )
                self.cond.notify_all()
            if failing:
                return Response(status_code=503)
            if path == "inbound":
                twiml = f"<Response><Message>{TWIML_ANSWER}</Message></Response>"
                return Response(twiml, media_type="application/xml")
            return Response(status_code=204)

        return app

    def clear(self) -> None:
        with self.cond:
            self.hits.clear()
            self.fail_first.clear()

    def wait_for(self, predicate: Callable[[list[Hit]], bool], timeout: float = 5.0) -> list[Hit]:
        with self.cond:
            done = self.cond.wait_for(lambda: predicate(self.hits), timeout)
            assert done, f"timed out; received {[(h.path, h.params) for h in self.hits]}"
            return list(self.hits)

    def statuses(self, path: str, final: set[str]) -> list[Hit]:
        """Wait until a callback with one of ``final`` statuses reached ``path``."""
        hits = self.wait_for(
            lambda hits: any(
                h.path == path and h.params.get("MessageStatus") in final for h in hits
            )
        )
        return [h for h in hits if h.path == path and h.answered < 300]


@dataclass
class Running:
    url: str
    settings: SandboxSettings

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        answer = httpx.request(method, self.url + path, **kwargs)
        answer.raise_for_status()
        return answer

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = f"{self.url}/2010-04-01/Accounts/{ACCOUNT}{path}"
        return httpx.request(method, url, auth=(ACCOUNT, TOKEN), **kwargs)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    with serve_in_thread(rec.app()) as url:
        rec.url = url
        yield rec


@pytest.fixture(scope="module")
def sandbox(receiver: Receiver) -> Iterator[Running]:
    settings = SandboxSettings(
        account_sid=ACCOUNT,
        auth_token=TOKEN,
        messaging_service_sid=SERVICE,
        inbound_url=receiver.url + "/inbound",
        step_delay_ms=5,
        callback_retry_delay_ms=20,
        slow_ms=300,
    )
    with serve_in_thread(create_app(settings)) as url:
        yield Running(url, settings)


@pytest.fixture(autouse=True)
def _clean(sandbox: Running, receiver: Receiver) -> None:
    sandbox.admin("POST", "/_sandbox/reset")
    receiver.clear()


@pytest.fixture
def client(sandbox: Running) -> Client:
    return sandbox_client(sandbox.url, ACCOUNT, TOKEN)


def send(client: Client, to: str, body: str = "Your appointment is tomorrow", **kw: Any) -> Any:
    return client.messages.create(to=to, from_=SENDER, body=body, **kw)


# --- the OpenAPI spec -----------------------------------------------------------------------


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` is not JSON Schema; turn it into a ``null`` type."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _openapi_to_jsonschema(value) for key, value in node.items()}
    if node.pop("nullable", False):
        if "type" in node:
            node["type"] = [node["type"], "null"]
        elif "$ref" in node:
            node = {"anyOf": [{"$ref": node.pop("$ref")}, {"type": "null"}], **node}
    return node


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    if not SPEC_PATH.exists():
        pytest.skip(f"Twilio OpenAPI spec not found at {SPEC_PATH}")
    return json.loads(SPEC_PATH.read_text())


def assert_matches(spec: dict[str, Any], path: str, method: str, status: str, body: Any) -> None:
    """Validate an answer against the spec's response schema ($refs into components)."""
    response = spec["paths"][path][method]["responses"][status]
    schema = _openapi_to_jsonschema(response["content"]["application/json"]["schema"])
    schema["components"] = _openapi_to_jsonschema(spec["components"])
    jsonschema.Draft202012Validator(schema).validate(body)


def assert_message_resource(spec: dict[str, Any], resource: dict[str, Any]) -> None:
    """Exactly the spec's message properties, with RFC 2822 dates."""
    properties = spec["components"]["schemas"]["api.v2010.account.message"]["properties"]
    assert set(resource) == set(properties)
    for key in ("date_created", "date_updated", "date_sent"):
        if resource[key] is not None:
            assert parsedate_to_datetime(resource[key]).tzinfo is not None


# --- tests ---------------------------------------------------------------------------------


def test_create_fetch_and_list_with_real_client(client: Client) -> None:
    created = send(client, "+15551110001", "Hello 👍")
    send(client, "+15551110002")
    assert created.sid.startswith("SM") and len(created.sid) == 34
    assert created.status == "queued"
    assert created.account_sid == ACCOUNT
    assert created.direction == "outbound-api"
    assert created.from_ == SENDER
    assert created.num_segments == "1"
    assert created.api_version == "2010-04-01"
    assert created.uri == f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{created.sid}.json"
    assert created.date_created.tzinfo is not None

    fetched = client.messages(created.sid).fetch()
    assert fetched.sid == created.sid
    assert fetched.body == "Hello 👍"

    listed = client.messages.list(to="+15551110001")
    assert [m.sid for m in listed] == [created.sid]


def test_answers_match_openapi_schemas(sandbox: Running, spec: dict[str, Any]) -> None:
    form = {"To": "+15551110003", "From": SENDER, "Body": "Schema check"}
    created = sandbox.api("POST", "/Messages.json", data=form)
    assert created.status_code == 201
    assert_matches(spec, LIST_PATH, "post", "201", created.json())
    assert_message_resource(spec, created.json())
    sid = created.json()["sid"]

    fetched = sandbox.api("GET", f"/Messages/{sid}.json")
    assert fetched.status_code == 200
    assert_matches(spec, ITEM_PATH, "get", "200", fetched.json())

    listed = sandbox.api("GET", "/Messages.json", params={"To": "+15551110003"})
    assert listed.status_code == 200
    assert_matches(spec, LIST_PATH, "get", "200", listed.json())
    page = listed.json()
    assert {"messages", "page", "page_size", "uri", "first_page_uri"} <= set(page)
    assert {"next_page_uri", "previous_page_uri", "start", "end"} <= set(page)
    for message in page["messages"]:
        assert_message_resource(spec, message)

    # An update answers a message too (here: redacting a finished message).
    sandbox_wait_status(sandbox, sid, {"delivered"})
    redacted = sandbox.api("POST", f"/Messages/{sid}.json", data={"Body": ""})
    assert redacted.status_code == 200, redacted.text
    assert redacted.json()["body"] == ""
    assert_matches(spec, ITEM_PATH, "post", "200", redacted.json())


def sandbox_wait_status(sandbox: Running, sid: str, wanted: set[str], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sandbox.api("GET", f"/Messages/{sid}.json").json()["status"] in wanted:
            return
        time.sleep(0.01)
    raise AssertionError(f"{sid} never reached {wanted}")


def test_client_sends_only_spec_request_fields(
    client: Client, sandbox: Running, receiver: Receiver, spec: dict[str, Any]
) -> None:
    callback = f"{receiver.url}/status/fields"
    send(client, "+15551110004", status_callback=callback, provide_feedback=True)
    client.messages.create(
        to="+15551110004",
        messaging_service_sid=SERVICE,
        body="Later",
        schedule_type="fixed",
        send_at=datetime.now(UTC) + timedelta(hours=2),
        validity_period=600,
        smart_encoded=True,
    )
    content = spec["paths"][LIST_PATH]["post"]["requestBody"]["content"]
    allowed = set(content["application/x-www-form-urlencoded"]["schema"]["properties"])
    requests = sandbox.admin("GET", "/_sandbox/messages").json()["requests"]
    assert len(requests) == 2
    for entry in requests:
        assert entry["http_status"] == 201
        assert set(entry["fields"]) <= allowed, set(entry["fields"]) - allowed


def test_status_callbacks_in_order_and_signed(client: Client, receiver: Receiver) -> None:
    callback = f"{receiver.url}/status/ok"
    message = send(client, "+15551110005", status_callback=callback)
    hits = receiver.statuses("status/ok", {"delivered"})
    assert [h.params["MessageStatus"] for h in hits] == ["queued", "sent", "delivered"]
    validator = RequestValidator(TOKEN)
    for hit in hits:
        assert hit.url == callback
        assert hit.signature and validator.validate(callback, hit.params, hit.signature)
        assert not RequestValidator("some-other-token").validate(
            callback, hit.params, hit.signature
        )
        assert hit.params["MessageSid"] == hit.params["SmsSid"] == message.sid
        assert hit.params["SmsStatus"] == hit.params["MessageStatus"]
        assert hit.params["AccountSid"] == ACCOUNT
        assert hit.params["From"] == SENDER
        assert hit.params["To"] == "+15551110005"
        assert hit.params["ApiVersion"] == "2010-04-01"
        assert "ErrorCode" not in hit.params
    fetched = client.messages(message.sid).fetch()
    assert fetched.status == "delivered"
    assert fetched.date_sent is not None and fetched.price is not None


def test_callback_retried_while_receiver_is_down(
    client: Client, receiver: Receiver, sandbox: Running
) -> None:
    receiver.fail_first["status/flaky"] = 2
    send(client, "+15551110006", status_callback=f"{receiver.url}/status/flaky")
    hits = receiver.statuses("status/flaky", {"delivered"})
    assert [h.params["MessageStatus"] for h in hits] == ["queued", "sent", "delivered"]
    recorded = sandbox.admin("GET", "/_sandbox/messages").json()["messages"][0]["callbacks"]
    assert recorded[0] == {"status": "queued", "http_status": 204, "attempts": 3, "error": None}


def test_bad_credentials_answer_401(sandbox: Running) -> None:
    wrong_token = sandbox_client(sandbox.url, ACCOUNT, "not-the-token")
    with pytest.raises(TwilioRestException) as caught:
        send(wrong_token, "+15551110007")
    assert caught.value.status == 401
    assert caught.value.code == 20003

    other_account = sandbox_client(sandbox.url, "AC" + "c3" * 16, TOKEN)
    with pytest.raises(TwilioRestException) as caught:
        send(other_account, "+15551110007")
    assert caught.value.status == 401

    bare = httpx.get(f"{sandbox.url}/2010-04-01/Accounts/{ACCOUNT}/Messages.json")
    assert bare.status_code == 401
    assert set(bare.json()) == {"code", "message", "more_info", "status"}


def test_invalid_magic_number_is_21211(client: Client) -> None:
    with pytest.raises(TwilioRestException) as caught:
        send(client, "+15005550001")
    assert (caught.value.status, caught.value.code) == (400, 21211)
    with pytest.raises(TwilioRestException) as caught:
        send(client, "not-a-number")
    assert caught.value.code == 21211
    with pytest.raises(TwilioRestException) as caught:
        send(client, "+15005550003")
    assert (caught.value.status, caught.value.code) == (400, 21408)


def test_rate_limit_once_then_success(client: Client, sandbox: Running) -> None:
    to = "+15551110008"
    rule = {"to": to, "http_status": 429, "code": 20429, "times": 1}
    sandbox.admin("POST", "/_sandbox/faults", json=rule)
    with pytest.raises(TwilioRestException) as caught:
        send(client, to)
    assert (caught.value.status, caught.value.code) == (429, 20429)
    assert send(client, to).status == "queued"
    outcomes = [
        r["http_status"] for r in sandbox.admin("GET", "/_sandbox/messages").json()["requests"]
    ]
    assert outcomes == [429, 201]


def test_server_error_and_slow_answer(client: Client, sandbox: Running) -> None:
    with pytest.raises(TwilioRestException) as caught:
        send(client, "+15005550500")
    assert (caught.value.status, caught.value.code) == (500, 20500)

    sandbox.admin("POST", "/_sandbox/faults", json={"to": "+1555111*", "delay_ms": 250, "times": 1})
    started = time.monotonic()
    send(client, "+15551110009")
    assert time.monotonic() - started >= 0.25
    started = time.monotonic()
    send(client, "+15551110009")
    assert time.monotonic() - started < 0.25


def test_stop_opts_out_until_start(client: Client, sandbox: Running, receiver: Receiver) -> None:
    phone = "+15551110010"
    send(client, phone)
    answer = sandbox.admin("POST", f"/_sandbox/phones/{phone}/reply", json={"body": "  Stop \n"})
    assert answer.json()["opted_out"] is True
    hits = receiver.wait_for(lambda hits: any(h.path == "inbound" for h in hits))
    assert hits[-1].params["OptOutType"] == "STOP"
    with pytest.raises(TwilioRestException) as caught:
        send(client, phone)
    assert (caught.value.status, caught.value.code) == (400, 21610)

    # A sentence containing the word is not a keyword.
    sandbox.admin("POST", f"/_sandbox/phones/{phone}/reply", json={"body": "please stop it"})
    assert phone in sandbox.admin("GET", "/_sandbox/messages").json()["opted_out"]

    answer = sandbox.admin("POST", f"/_sandbox/phones/{phone}/reply", json={"body": "start"})
    assert answer.json()["opted_out"] is False
    assert send(client, phone).status == "queued"


def test_delivery_failures_reported_by_callback(
    client: Client, receiver: Receiver, sandbox: Running
) -> None:
    undelivered = send(client, "+15005553003", status_callback=f"{receiver.url}/status/u")
    hits = receiver.statuses("status/u", {"undelivered", "failed"})
    assert [h.params["MessageStatus"] for h in hits] == ["queued", "sent", "undelivered"]
    assert hits[-1].params["ErrorCode"] == "30003"
    fetched = client.messages(undelivered.sid).fetch()
    assert (fetched.status, fetched.error_code) == ("undelivered", 30003)
    assert fetched.error_message

    send(client, "+15005553008", status_callback=f"{receiver.url}/status/f")
    hits = receiver.statuses("status/f", {"undelivered", "failed"})
    assert [h.params["MessageStatus"] for h in hits] == ["queued", "failed"]
    assert hits[-1].params["ErrorCode"] == "30008"

    rule = {"to": "+15551110011", "delivery_error": 30006, "times": 1}
    sandbox.admin("POST", "/_sandbox/faults", json=rule)
    send(client, "+15551110011", status_callback=f"{receiver.url}/status/rt")
    hits = receiver.statuses("status/rt", {"undelivered", "failed"})
    assert 30003 <= int(hits[-1].params["ErrorCode"]) <= 30008


def test_cancel_scheduled_message(client: Client, receiver: Receiver) -> None:
    scheduled = client.messages.create(
        to="+15551110012",
        messaging_service_sid=SERVICE,
        body="Reminder for next week",
        schedule_type="fixed",
        send_at=datetime.now(UTC) + timedelta(hours=1),
        status_callback=f"{receiver.url}/status/c",
    )
    assert scheduled.status == "scheduled"
    canceled = client.messages(scheduled.sid).update(status="canceled")
    assert canceled.status == "canceled"
    assert client.messages(scheduled.sid).fetch().status == "canceled"
    hits = receiver.statuses("status/c", {"canceled"})
    assert [h.params["MessageStatus"] for h in hits] == ["canceled"]
    with pytest.raises(TwilioRestException) as caught:
        client.messages(scheduled.sid).update(status="canceled")
    assert caught.value.code == 30409


def test_messaging_service_send_is_accepted_then_delivered(
    client: Client, receiver: Receiver
) -> None:
    message = client.messages.create(
        to="+15551110013",
        messaging_service_sid=SERVICE,
        body="Via service",
        status_callback=f"{receiver.url}/status/ms",
    )
    assert message.status == "accepted"
    assert message.messaging_service_sid == SERVICE
    hits = receiver.statuses("status/ms", {"delivered"})
    assert [h.params["MessageStatus"] for h in hits] == ["queued", "sent", "delivered"]
    assert all(h.params["MessagingServiceSid"] == SERVICE for h in hits)
    assert client.messages(message.sid).fetch().from_ == SENDER


def test_inbound_reply_posts_signed_webhook_and_records_twiml(
    client: Client, sandbox: Running, receiver: Receiver
) -> None:
    phone = "+15551110014"
    send(client, phone, "Reply C to confirm")
    answer = sandbox.admin("POST", f"/_sandbox/phones/{phone}/reply", json={"body": "C"}).json()
    assert answer["webhook_status"] == 200
    assert [r["body"] for r in answer["replies"]] == [TWIML_ANSWER]

    hit = receiver.wait_for(lambda hits: any(h.path == "inbound" for h in hits))[-1]
    inbound_url = sandbox.settings.inbound_url
    assert hit.signature and RequestValidator(TOKEN).validate(
        inbound_url, hit.params, hit.signature
    )
    assert hit.params["From"] == phone
    assert hit.params["To"] == SENDER
    assert hit.params["Body"] == "C"
    assert hit.params["SmsStatus"] == "received"
    assert hit.params["NumMedia"] == "0"
    assert hit.params["MessageSid"] == answer["sid"]
    assert hit.params["AccountSid"] == ACCOUNT
    assert hit.params["MessagingServiceSid"] == SERVICE
    assert "OptOutType" not in hit.params

    thread = sandbox.admin("GET", "/_sandbox/threads").json()["threads"][0]
    assert thread["phone"] == phone
    assert [(m["direction"], m["body"]) for m in thread["messages"]] == [
        ("outbound-api", "Reply C to confirm"),
        ("inbound", "C"),
        ("outbound-reply", TWIML_ANSWER),
    ]
    assert {m.direction for m in client.messages.list(to=phone)} == {
        "outbound-api",
        "outbound-reply",
    }


def test_list_paging_and_filters(client: Client, sandbox: Running) -> None:
    phone = "+15551110015"
    sids = [send(client, phone, f"message {n}").sid for n in range(5)]
    other = send(client, "+15551110016").sid
    listed = client.messages.list(to=phone, page_size=2)
    assert [m.sid for m in listed] == list(reversed(sids))

    first = sandbox.api("GET", "/Messages.json", params={"To": phone, "PageSize": 2}).json()
    assert (first["page"], first["page_size"], first["start"], first["end"]) == (0, 2, 0, 1)
    assert first["previous_page_uri"] is None
    assert "PageToken=PA" in first["next_page_uri"]
    second = httpx.get(sandbox.url + first["next_page_uri"], auth=(ACCOUNT, TOKEN)).json()
    assert (second["page"], second["start"], second["end"]) == (1, 2, 3)
    assert second["previous_page_uri"] is not None

    for sid in [*sids, other]:
        sandbox_wait_status(sandbox, sid, {"delivered"})
    today = datetime.now(UTC).date()
    assert len(client.messages.list(to=phone, date_sent=today)) == 5
    assert client.messages.list(to=phone, date_sent_before=today - timedelta(days=1)) == []
    assert len(client.messages.list(from_=SENDER, date_sent_after=today)) == 6


def test_sandbox_client_ignores_edge_and_region(
    sandbox: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_EDGE", "sydney")
    monkeypatch.setenv("TWILIO_REGION", "au1")
    client = sandbox_client(sandbox.url + "/", ACCOUNT, TOKEN)
    assert send(client, "+15551110017").status == "queued"


def test_admin_log_has_arrival_times(client: Client, sandbox: Running) -> None:
    before = time.time()
    send(client, "+15551110018")
    with pytest.raises(TwilioRestException):
        send(client, "+15005550001")
    log = sandbox.admin("GET", "/_sandbox/messages").json()
    assert [r["http_status"] for r in log["requests"]] == [201, 400]
    assert [r["code"] for r in log["requests"]] == [None, 21211]
    arrivals = [r["received_at"] for r in log["requests"]]
    assert before <= arrivals[0] <= arrivals[1] <= time.time()
    assert log["messages"][0]["received_at"] == arrivals[0]
    faults = sandbox.admin("GET", "/_sandbox/faults").json()
    assert any(f["to"] == "+15005550001" and f["code"] == 21211 for f in faults)


async def test_async_client_through_sandbox_client(sandbox: Running) -> None:
    from twilio.http.async_http_client import AsyncTwilioHttpClient

    http = AsyncTwilioHttpClient()
    client = sandbox_client(sandbox.url, ACCOUNT, TOKEN, http_client=http)
    try:
        created = await client.messages.create_async(to="+15551110019", from_=SENDER, body="a")
        fetched = await client.messages(created.sid).fetch_async()
        assert fetched.sid == created.sid
    finally:
        await http.close()


def test_help_is_left_to_the_application(sandbox: Running, receiver: Receiver) -> None:
    """The clinic's Messaging Service hands HELP to the application, so the client gets
    one answer (the clinic's), not Twilio's default as well; STOP still gets Twilio's."""
    phone = "+15551110020"
    sandbox.admin("POST", f"/_sandbox/phones/{phone}/reply", json={"body": "HELP"})
    receiver.wait_for(lambda hits: any(h.params.get("Body") == "HELP" for h in hits))
    sandbox.admin("POST", f"/_sandbox/phones/{phone}/reply", json={"body": "STOP"})
    thread = [
        m
        for m in sandbox.admin("GET", "/_sandbox/messages").json()["messages"]
        if phone in (m.get("to"), m.get("from"))
    ]
    bodies = [m["body"] for m in thread if m.get("to") == phone]
    assert AUTO_REPLIES["help"] not in bodies
    assert bodies.count(AUTO_REPLIES["stop"]) == 1


# --- the reminders service's sender -------------------------------------------------------


@pytest.mark.parametrize("through", ["number", "messaging service"])
async def test_the_reminders_sender_sends_from_its_sender_and_finds_the_message_again(
    client: Client, sandbox: Running, receiver: Receiver, through: str
) -> None:
    """Reminders sends through the SDK's request layer (not ``client.messages``): the
    message must still leave from the configured number or Messaging Service, carry the
    status callback, and be found at the provider on a look after a lost answer."""
    from services.reminders.sender import Sender
    from services.reminders.settings import RemindersSettings

    settings = RemindersSettings(
        twilio_account_sid=ACCOUNT,
        twilio_auth_token=TOKEN,
        twilio_api_base_url=sandbox.url,
        twilio_from_number=SENDER,
        twilio_messaging_service_sid=SERVICE if through == "messaging service" else None,
        public_base_url=receiver.url,
    )
    sender = Sender(settings)
    sent_at = datetime.now(UTC)
    try:
        accepted = await sender.send("+15551110031", "See you Tuesday at 10:00", sent_at)
        found = await sender.find("+15551110031", "See you Tuesday at 10:00", sent_at)
        other = await sender.find("+15551110031", "another text", sent_at)
    finally:
        await sender.close()

    message = client.messages(accepted.sid).fetch()
    assert (message.to, message.body, message.from_) == (
        "+15551110031",
        "See you Tuesday at 10:00",
        SENDER,
    )
    assert message.messaging_service_sid == (SERVICE if through == "messaging service" else None)
    assert found is not None and found.sid == accepted.sid
    assert other is None
    statuses = receiver.statuses("twilio/status", {"delivered"})
    assert statuses[-1].params["MessageSid"] == accepted.sid
