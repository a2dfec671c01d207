"""The sandbox's "carrier network": status steps, signed callbacks and inbound webhooks.

Deliveries run as their own asyncio tasks, not as FastAPI background tasks: a
background task runs inside the request's ASGI call, so a keep-alive client (the
twilio client keeps its connection open) would wait for the whole delivery before
its next request got an answer.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree

import aiohttp
from twilio.request_validator import RequestValidator

from .errors import delivery_message, delivery_status
from .settings import SandboxSettings
from .store import API_VERSION, Message, Store, now, num_segments

log = logging.getLogger("twilio_sandbox")

#: Price per segment charged on "sent", like a US long-code SMS.
PRICE_PER_SEGMENT = 0.0079

#: Status callbacks in flight at once, over as many kept-alive connections (one aiohttp
#: session for every callback and webhook). It was httpx: its pool looks through every
#: waiting request each time a connection frees up, so thousands of callbacks let loose at
#: once (a burst of texts) cost more CPU in that scan than in the requests, past 20
#: kept-alive connections it closed each one after use, and each request cost ~1 ms of
#: CPU on the cores the services under test use. Waiting here (a FIFO) keeps the
#: connections few and reused.
CALLBACK_CONNECTIONS = 32


@dataclass(frozen=True)
class Answer:
    """What a callback or webhook POST got back."""

    status_code: int
    text: str

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300


@dataclass
class WebhookResult:
    """What the inbound webhook answered; ``status`` is None when it could not be reached."""

    status: int | None
    error: str | None = None
    replies: list[str] = field(default_factory=list)


def twiml_messages(text: str) -> list[str]:
    """The texts of ``<Message>`` verbs in a TwiML ``<Response>``, or [] for anything else."""
    try:
        # The document comes from the developer's own app under test, on loopback.
        root = ElementTree.fromstring(text)  # noqa: S314
    except ElementTree.ParseError:
        return []
    if root.tag != "Response":
        return []
    texts = []
    for verb in root.iter("Message"):
        body = verb.find("Body")
        texts.append(((body.text if body is not None else verb.text) or "").strip())
    return texts


def delivery_steps(delivery_error: int | None) -> list[str]:
    """The statuses a message goes through after it is accepted."""
    if delivery_error is None:
        return ["queued", "sent", "delivered"]
    if delivery_status(delivery_error) == "failed":
        return ["queued", "failed"]
    return ["queued", "sent", "undelivered"]


class Network:
    def __init__(self, settings: SandboxSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.validator = RequestValidator(settings.auth_token)
        self._http: aiohttp.ClientSession | None = None
        self._callback_slots = asyncio.Semaphore(CALLBACK_CONNECTIONS)
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def http(self) -> aiohttp.ClientSession:
        """Made on first use, so it belongs to the event loop that serves the app."""
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=CALLBACK_CONNECTIONS + 8,  # the inbound webhooks' too
                    keepalive_timeout=30,
                ),
                trust_env=False,
            )
        return self._http

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, keeping a reference so it is not collected."""
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    def sign(self, url: str, params: dict[str, str]) -> str:
        return str(self.validator.compute_signature(url, params))

    async def post_form(
        self,
        url: str,
        params: dict[str, str],
        *,
        attempts: int,
        limit_s: float,
        bounded: bool = False,
    ) -> tuple[Answer | None, int, str | None]:
        """POST a signed form; retry when unreachable or 5xx. Returns (answer, attempts, error).

        ``bounded``: wait for one of the :data:`CALLBACK_CONNECTIONS` slots first (status
        callbacks; an inbound webhook, whose handler may call the sandbox back, never waits).
        """
        headers = {
            "X-Twilio-Signature": self.sign(url, params),
            "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
            "User-Agent": "TwilioProxy/1.1",
        }
        answer: Answer | None = None
        error: str | None = None
        for attempt in range(1, attempts + 1):
            try:
                if bounded:
                    async with self._callback_slots:
                        answer = await self._post(url, params, headers, limit_s)
                else:
                    answer = await self._post(url, params, headers, limit_s)
                error = None
            except (aiohttp.ClientError, TimeoutError) as exc:
                answer, error = None, type(exc).__name__
            if answer is not None and answer.status_code < 500:
                return answer, attempt, None
            if attempt < attempts:
                pause = self.settings.callback_retry_delay_ms / 1000 * 2 ** (attempt - 1)
                await asyncio.sleep(pause)
        return answer, attempts, error

    async def _post(
        self, url: str, params: dict[str, str], headers: dict[str, str], limit_s: float
    ) -> Answer:
        async with self.http.post(
            url,
            data=params,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=limit_s),
        ) as response:
            return Answer(response.status, await response.text(errors="replace"))

    def _alive(self, message: Message, generation: int) -> bool:
        return self.store.generation == generation and self.store.get(message.sid) is message

    async def deliver(self, message: Message, delivery_error: int | None) -> None:
        """Move an accepted message through its statuses, one callback per step, in order."""
        generation = self.store.generation
        if message.status == "scheduled" and message.send_at is not None:
            wait = (message.send_at - datetime.now(UTC)).total_seconds()
            await asyncio.sleep(max(wait, 0))
            if not self._alive(message, generation) or message.status != "scheduled":
                return
        for status in delivery_steps(delivery_error):
            await asyncio.sleep(self.settings.step_delay_ms / 1000)
            if not self._alive(message, generation) or message.status == "canceled":
                return
            self._apply(message, status, delivery_error)
            if message.status_callback:
                await self.status_callback(message)

    def _apply(self, message: Message, status: str, delivery_error: int | None) -> None:
        if message.from_ is None:  # a Messaging Service picks the sender when it queues
            message.from_ = self.settings.from_number
        if status == "sent":
            message.date_sent = now()
            message.price = f"-{PRICE_PER_SEGMENT * num_segments(message.body):.5f}"
        if status in ("failed", "undelivered") and delivery_error is not None:
            message.error_code = delivery_error
            message.error_message = delivery_message(delivery_error)
        if message.status != status:
            message.set_status(status)
        log.debug("message %s is %s", message.sid, status)  # three a message: not at INFO

    async def status_callback(self, message: Message) -> None:
        """Post the message's current status to its StatusCallback, as Twilio does."""
        url = message.status_callback
        if not url:
            return
        params = {
            "AccountSid": message.account_sid,
            "ApiVersion": API_VERSION,
            "MessageSid": message.sid,
            "MessageStatus": message.status,
            "SmsSid": message.sid,
            "SmsStatus": message.status,
            "To": message.to,
        }
        if message.from_:
            params["From"] = message.from_
        if message.messaging_service_sid:
            params["MessagingServiceSid"] = message.messaging_service_sid
        if message.error_code is not None:
            params["ErrorCode"] = str(message.error_code)
        answer, attempts, error = await self.post_form(
            url,
            params,
            attempts=1 + self.settings.callback_retries,
            limit_s=self.settings.callback_timeout_s,
            bounded=True,
        )
        outcome = answer.status_code if answer is not None else None
        message.callbacks.append(
            {"status": message.status, "http_status": outcome, "attempts": attempts, "error": error}
        )
        if outcome is None or outcome >= 400:
            log.warning("status callback for %s got %s (%s)", message.sid, outcome, error)

    async def inbound_webhook(self, message: Message, opt_out_type: str | None) -> WebhookResult:
        """Post an incoming SMS to the inbound URL once, as Twilio does (it does not retry)."""
        params = {
            "AccountSid": message.account_sid,
            "ApiVersion": API_VERSION,
            "Body": message.body,
            "From": message.from_ or "",
            "MessageSid": message.sid,
            "MessagingServiceSid": message.messaging_service_sid or "",
            "NumMedia": "0",
            "NumSegments": str(num_segments(message.body)),
            "SmsMessageSid": message.sid,
            "SmsSid": message.sid,
            "SmsStatus": "received",
            "To": message.to,
        }
        if opt_out_type:
            params["OptOutType"] = opt_out_type
        answer, _, error = await self.post_form(
            self.settings.inbound_url,
            params,
            attempts=1,
            limit_s=self.settings.webhook_timeout_s,
        )
        if answer is None:
            log.warning("inbound webhook for %s unreachable (%s)", message.sid, error)
            return WebhookResult(status=None, error=error)
        replies = twiml_messages(answer.text) if answer.is_success else []
        return WebhookResult(status=answer.status_code, replies=replies)
