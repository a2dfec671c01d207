"""The send rate of a sender, shared by every reminders replica.

Twilio limits each sender (a number, or a Messaging Service), not each process: two
replicas each sending at the limit would send at twice it. So the pace lives in NATS KV,
one key per sender in the ``reminders`` bucket (the one its NATS user may write) holding the next free send slot (wall-clock
seconds). A send reserves the slot with a compare-and-set and waits for it; replicas that
race for the same slot retry with the newer value. Within a process the reservations queue
on a lock, so only replicas contend, and whoever holds the lock reserves slots for every
send waiting behind it in the same compare-and-set: one round trip per batch, not per text
(a KV write on a three-node stream under load takes ~0.1 s: one per text had capped each
replica near 10 texts a second whatever the limit).

The slots are wall-clock times: replicas on different machines rely on their clocks
agreeing (NTP) to a small part of a slot. While NATS cannot be reached a replica paces
itself alone (``fallback``), so texts keep leaving; the shared pace resumes with NATS.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from services.reminders.sender import RateLimiter

log = structlog.get_logger(__name__)

#: The KV bucket of the paces: named after the service, so its NATS user may write it.
PACE_BUCKET = "reminders"
#: Compare-and-set attempts before a reservation gives up and paces locally.
MAX_RACES = 50


def pace_key(sender: str) -> str:
    """A KV key for ``sender`` (a phone number's ``+`` is not allowed in keys)."""
    return "pace." + hashlib.sha256(sender.encode()).hexdigest()[:24]


class SharedRateLimiter:
    """At most ``per_second`` sends a second from one sender, across every replica."""

    def __init__(
        self,
        bucket: Callable[[], Awaitable[KeyValue]],
        sender: str,
        per_second: float,
    ) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.key = pace_key(sender)
        self._bucket = bucket
        self._lock = asyncio.Lock()
        self._waiting: list[asyncio.Future[float]] = []
        self._fallback = RateLimiter(per_second)
        self._alone = False

    async def wait(self) -> None:
        if not self.interval:
            return
        mine: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting.append(mine)
        async with self._lock:
            if not mine.done():  # nobody reserved for it yet: reserve for all who wait
                await self._reserve_for_waiting()
        try:
            slot = mine.result()
        except _Unshared:
            await self._fallback.wait()
            return
        delay = slot - time.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _reserve_for_waiting(self) -> None:
        batch, self._waiting = self._waiting, []
        try:
            first = await self._reserve(len(batch))
        except BaseException as exc:
            for waiter in batch:  # none is left waiting, even if this task is cancelled
                waiter.set_exception(_Unshared())
            if not isinstance(
                exc, (TimeoutError, OSError, nats.errors.Error, nats.js.errors.Error)
            ):
                raise
            if not self._alone:
                log.warning("pace.local", error=type(exc).__name__)
                self._alone = True
            return
        if self._alone:
            log.info("pace.shared")
            self._alone = False
        for i, waiter in enumerate(batch):
            waiter.set_result(first + i * self.interval)

    async def _reserve(self, count: int) -> float:
        """``count`` next free slots, taken: from ``max(now, stored)``, and the stored one
        moved past them."""
        kv = await self._bucket()
        span = count * self.interval
        for _ in range(MAX_RACES):
            now = time.time()
            try:
                entry = await kv.get(self.key)
            except nats.js.errors.KeyNotFoundError:
                try:
                    await kv.create(self.key, repr(now + span).encode())
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # another replica created it first
                return now
            slot = max(now, float(entry.value or b"0"))
            try:
                await kv.update(self.key, repr(slot + span).encode(), last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another replica took these slots
            return slot
        raise TimeoutError(f"{MAX_RACES} replicas' races for one send slot")


class _Unshared(Exception):
    """NATS could not be asked: this send paces itself locally."""
