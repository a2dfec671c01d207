"""Sending through Twilio: the real ``twilio`` client, a rate limit per sender, retries for
what may pass (429, 5xx, timeouts) and none for what will not (21211, 21610, 21408, any
other 4xx), and a look-up of what the provider already has, to never send twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import aiohttp
import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from twilio.base.deserialize import rfc2822_datetime
from twilio.base.domain import Domain
from twilio.base.exceptions import TwilioRestException
from twilio.base.version import Version
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from services.reminders.settings import RemindersSettings

log = structlog.get_logger(__name__)

#: Named by the architecture; every other 4xx is permanent too.
INVALID_NUMBER, UNSUBSCRIBED, REGION_NOT_ENABLED = 21211, 21610, 21408
RATE_LIMITED = 20429
#: How far back a provider's message may date and still be the one we sent.
LOOKBACK = timedelta(minutes=5)
TWILIO_API = "https://api.twilio.com"
#: What the Messages resource answers in JSON, as the SDK's generated code asks.
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}


def twilio_client(settings: RemindersSettings) -> Client:
    """The real client with an asyncio HTTP client.

    An edge or region (also from ``TWILIO_EDGE``/``TWILIO_REGION``) would rewrite every
    host into ``api.<edge>.<region>.twilio.com``; with ``TWILIO_API_BASE_URL`` set (the
    sandbox) both are cleared, so requests go where that URL says.
    """
    client = Client(
        settings.twilio_account_sid,
        settings.twilio_auth_token,
        http_client=AsyncTwilioHttpClient(),
    )
    if settings.twilio_api_base_url:
        client.edge = None
        client.region = None
    return client


class Messages:
    """Twilio's Messages resource (API 2010-04-01) through the SDK's own request layer:
    its ``Version`` signs, sends over the client's HTTP client and turns an error answer
    into :class:`TwilioRestException`, as ``client.messages`` does.

    ``client.messages`` itself is not used: it imports the SDK's whole generated 2010 API
    (calls, conferences, queues … 88 modules), 7 MB of the sending process's memory for
    the one resource it needs (issue 12's idle floor is 100 MB).
    """

    def __init__(self, client: Client, base_url: str) -> None:
        self.client = client
        self._version = Version(Domain(client, base_url), "2010-04-01")
        self._uri = f"/Accounts/{client.account_sid}/Messages.json"

    async def create(self, params: dict[str, str]) -> dict[str, Any]:
        """POST one message; ``params`` in the API's names (``To``, ``Body``, ``From`` …)."""
        payload: dict[str, Any] = await self._version.create_async(
            method="POST", uri=self._uri, data=params, headers=FORM_HEADERS
        )
        return payload

    async def to(self, number: str, page_size: int) -> list[dict[str, Any]]:
        """The newest ``page_size`` messages to ``number``, newest first."""
        page: dict[str, Any] = await self._version.fetch_async(
            method="GET",
            uri=self._uri,
            params={"To": number, "PageSize": page_size},
            headers=FORM_HEADERS,
        )
        return list(page.get("messages") or [])


def twilio_messages(settings: RemindersSettings) -> Messages:
    return Messages(twilio_client(settings), settings.twilio_api_base_url or TWILIO_API)


class SendFailed(Exception):
    """The provider refused the message for good, or every attempt failed."""

    def __init__(
        self, code: int | None, detail: str, *, permanent: bool, attempts: int = 0
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.permanent = permanent
        self.attempts = attempts


@dataclass(frozen=True)
class Accepted:
    sid: str
    status: str
    attempts: int = 1
    found: bool = False  # the provider already had it (a send we could not record)


def is_transient(exc: BaseException) -> bool:
    """429, 5xx, timeouts and broken connections may pass on a later attempt."""
    if isinstance(exc, TwilioRestException):
        return exc.status == 429 or exc.code == RATE_LIMITED or exc.status >= 500
    return isinstance(exc, (TimeoutError, aiohttp.ClientError, ConnectionError))


def is_ambiguous(exc: BaseException) -> bool:
    """The provider may have created the message although we got no answer."""
    if isinstance(exc, TwilioRestException):
        return exc.status >= 500
    return isinstance(exc, (TimeoutError, aiohttp.ServerDisconnectedError))


def failure_of(exc: BaseException, attempts: int) -> SendFailed:
    if isinstance(exc, TwilioRestException):
        code = exc.code if exc.code is not None else exc.status
        permanent = not is_transient(exc)
        detail = f"HTTP {exc.status}, code {exc.code}: {exc.msg}"[:200]
        if not permanent:
            detail = f"gave up after {attempts} attempts; last {detail}"[:200]
        return SendFailed(code, detail, permanent=permanent, attempts=attempts)
    return SendFailed(
        None,
        f"gave up after {attempts} attempts; last {type(exc).__name__}",
        permanent=False,
        attempts=attempts,
    )


class RateLimiter:
    """Evenly spaced slots: at most ``per_second`` calls a second, no bursts."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = asyncio.get_running_loop().time()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class Pace(Protocol):
    async def wait(self) -> None: ...


class Sender:
    """Twilio for the senders. Its HTTP session is made inside the event loop (:meth:`open`
    at start, else on first use), so the composition root builds it with everything else.

    Each sender's pace is this process's own until :meth:`share_pace` hands it a shared
    one (``pacing.SharedRateLimiter``: every replica together keeps the limit)."""

    def __init__(self, settings: RemindersSettings, messages: Messages | None = None) -> None:
        self.settings = settings
        self._messages = messages
        self.callback_url = f"{settings.base_url}/twilio/status"
        self._limiters: dict[str, Pace] = {}
        self._pace: Callable[[str, float], Pace] = lambda _sender, rate: RateLimiter(rate)
        self._slots = asyncio.Semaphore(settings.sms_concurrency)

    def share_pace(self, pace: Callable[[str, float], Pace]) -> None:
        """Pace each sender with ``pace(sender, per_second)`` from now on."""
        self._pace = pace
        self._limiters.clear()

    @property
    def messages(self) -> Messages:
        if self._messages is None:
            self._messages = twilio_messages(self.settings)
        return self._messages

    def open(self) -> None:
        """Make the HTTP session now, in the event loop, before the first job needs it."""
        _ = self.messages

    def limiter(self, sender: str) -> Pace:
        if sender not in self._limiters:
            self._limiters[sender] = self._pace(sender, self.settings.sms_rate_per_second)
        return self._limiters[sender]

    async def close(self) -> None:
        if self._messages is None:
            return
        close = getattr(self._messages.client.http_client, "close", None)
        if close is not None:
            await close()

    async def _create(self, to: str, body: str) -> Accepted:
        settings = self.settings
        sender: dict[str, str] = (
            {"MessagingServiceSid": settings.twilio_messaging_service_sid}
            if settings.twilio_messaging_service_sid
            else {"From": settings.twilio_from_number}
        )
        async with asyncio.timeout(settings.twilio_timeout_seconds):
            message = await self.messages.create(
                {"To": to, "Body": body, "StatusCallback": self.callback_url, **sender}
            )
        return Accepted(sid=str(message["sid"]), status=str(message.get("status") or "queued"))

    async def find(self, to: str, body: str, since: datetime) -> Accepted | None:
        """The provider's message to ``to`` with exactly ``body``, created after ``since``."""
        async with asyncio.timeout(self.settings.twilio_timeout_seconds * 3):
            messages = await self.messages.to(to, page_size=100)
        for message in messages:
            created = rfc2822_datetime(message.get("date_created"))
            if (
                message.get("body") == body
                and str(message.get("direction") or "").startswith("outbound")
                and (created is None or created >= since - LOOKBACK)
            ):
                return Accepted(sid=str(message["sid"]), status=str(message["status"]), found=True)
        return None

    async def send(self, to: str, body: str, since: datetime) -> Accepted:
        """Create the message, retrying what may pass; before a retry that follows an
        ambiguous failure, look whether the provider has it already."""
        settings = self.settings
        last: BaseException | None = None
        attempts = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(settings.sms_max_attempts),
            wait=wait_exponential_jitter(
                multiplier=settings.sms_retry_base_seconds,
                max=30,
                jitter=settings.sms_retry_base_seconds,
            ),
            retry=retry_if_exception(is_transient),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if last is not None and is_ambiguous(last):
                        found = await self.find(to, body, since)
                        if found is not None:
                            return found
                    async with self._slots:
                        await self.limiter(settings.sender).wait()
                        attempts += 1
                        try:
                            accepted = await self._create(to, body)
                        except BaseException as exc:
                            last = exc
                            if is_transient(exc):
                                log.warning(
                                    "sms.retry", to=to, attempt=attempts, error=_describe(exc)
                                )
                            raise
                    return Accepted(accepted.sid, accepted.status, attempts)
        except (TwilioRestException, TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise failure_of(exc, attempts) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TwilioRestException):
        return f"HTTP {exc.status} code {exc.code}"
    return type(exc).__name__
