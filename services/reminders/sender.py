"""Sending through Twilio: the real ``twilio`` client, a rate limit per sender, retries for
what may pass (429, 5xx, timeouts) and none for what will not (21211, 21610, 21408, any
other 4xx), and a look-up of what the provider already has, to never send twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import aiohttp
import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from services.reminders.settings import RemindersSettings

log = structlog.get_logger(__name__)

#: Named by the architecture; every other 4xx is permanent too.
INVALID_NUMBER, UNSUBSCRIBED, REGION_NOT_ENABLED = 21211, 21610, 21408
RATE_LIMITED = 20429
#: How far back a provider's message may date and still be the one we sent.
LOOKBACK = timedelta(minutes=5)


def twilio_client(settings: RemindersSettings) -> Client:
    """The real client with an asyncio HTTP client; pointed at ``TWILIO_API_BASE_URL`` when set.

    twilio 9.13 builds every Messages URL, and list paging, from ``client.api.base_url``;
    an edge or region (also from ``TWILIO_EDGE``/``TWILIO_REGION``) would rewrite the host
    into ``api.<edge>.<region>.twilio.com``, so both are cleared.
    """
    client = Client(
        settings.twilio_account_sid,
        settings.twilio_auth_token,
        http_client=AsyncTwilioHttpClient(),
    )
    if settings.twilio_api_base_url:
        client.edge = None
        client.region = None
        client.api.base_url = settings.twilio_api_base_url.rstrip("/")
    return client


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

    def __init__(self, settings: RemindersSettings, client: Client | None = None) -> None:
        self.settings = settings
        self._client = client
        self.callback_url = f"{settings.base_url}/twilio/status"
        self._limiters: dict[str, Pace] = {}
        self._pace: Callable[[str, float], Pace] = lambda _sender, rate: RateLimiter(rate)
        self._slots = asyncio.Semaphore(settings.sms_concurrency)

    def share_pace(self, pace: Callable[[str, float], Pace]) -> None:
        """Pace each sender with ``pace(sender, per_second)`` from now on."""
        self._pace = pace
        self._limiters.clear()

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = twilio_client(self.settings)
        return self._client

    def open(self) -> None:
        """Make the HTTP session now, in the event loop, and load the client's messages API
        (a second of imports) before the first job needs it."""
        _ = self.client.messages

    def limiter(self, sender: str) -> Pace:
        if sender not in self._limiters:
            self._limiters[sender] = self._pace(sender, self.settings.sms_rate_per_second)
        return self._limiters[sender]

    async def close(self) -> None:
        if self._client is None:
            return
        close = getattr(self._client.http_client, "close", None)
        if close is not None:
            await close()

    async def _create(self, to: str, body: str) -> Accepted:
        settings = self.settings
        sender: dict[str, str] = (
            {"messaging_service_sid": settings.twilio_messaging_service_sid}
            if settings.twilio_messaging_service_sid
            else {"from_": settings.twilio_from_number}
        )
        async with asyncio.timeout(settings.twilio_timeout_seconds):
            message = await self.client.messages.create_async(
                to=to, body=body, status_callback=self.callback_url, **sender
            )
        return Accepted(sid=str(message.sid), status=str(message.status or "queued"))

    async def find(self, to: str, body: str, since: datetime) -> Accepted | None:
        """The provider's message to ``to`` with exactly ``body``, created after ``since``."""
        async with asyncio.timeout(self.settings.twilio_timeout_seconds * 3):
            messages = await self.client.messages.list_async(to=to, limit=100)
        for message in messages:
            created = message.date_created
            if (
                message.body == body
                and str(message.direction or "").startswith("outbound")
                and (created is None or created >= since - LOOKBACK)
            ):
                return Accepted(sid=str(message.sid), status=str(message.status), found=True)
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
