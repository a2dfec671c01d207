"""A lease in NATS KV: at most one holder at a time, and it lapses when the holder dies.

Used for "one active scheduler": an APScheduler job store is never shared by two
schedulers, so every replica runs, but only the lease holder schedules.

The key is created only if absent, renewed with a compare-and-set on its last revision
every third of the TTL, and carries a per-message TTL: if the holder stops renewing (crash,
``kill -9``, partition) the key vanishes after the TTL and a standby's create succeeds. A
holder that cannot renew for half a TTL steps down on its own, well before anyone else can
take over. Services share one bucket (``leases``), each with its own key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable

import nats.errors
import nats.js.errors
import structlog
from nats.js.api import PubAck
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from shared.worker import Worker

log = structlog.get_logger(__name__)

DEFAULT_BUCKET = "leases"

#: JetStream error codes of a failed "expected last subject sequence" check.
WRONG_LAST_SEQUENCE = (10071, 10164)


async def ensure_lease_bucket(
    js: JetStreamContext, *, replicas: int = 1, bucket: str = DEFAULT_BUCKET
) -> None:
    """Create the lease bucket with ``replicas`` copies, or change an existing bucket's
    replicas (``NATS_REPLICAS`` raised from 1 to 3 when moving to a cluster)."""
    try:
        info = await js.stream_info(f"KV_{bucket}")
    except nats.js.errors.NotFoundError:
        try:
            # No bucket TTL: each lease key carries its own, so services can share it.
            await js.create_key_value(bucket=bucket, history=1, replicas=replicas)
            return
        except nats.js.errors.BadRequestError:  # another service created it meanwhile
            info = await js.stream_info(f"KV_{bucket}")
    if info.config.num_replicas != replicas:
        info.config.num_replicas = replicas
        await js.update_stream(info.config)
        log.info("lease.bucket_replicas", bucket=bucket, replicas=replicas)


def instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    def __init__(
        self,
        js: JetStreamContext,
        *,
        key: str,
        ttl_seconds: float,
        bucket: str = DEFAULT_BUCKET,
        holder: str | None = None,
    ) -> None:
        self._js = js
        self.bucket = bucket
        self.key = key
        self.ttl_seconds = max(1, int(ttl_seconds))
        self.holder = holder or instance_id()
        self.revision: int | None = None
        #: Set when the lease is lost while held: stop acting at once.
        self.lost = asyncio.Event()
        self._renewed_at = 0.0
        self._kv: KeyValue | None = None
        self._per_message_ttl = True
        #: Another holder's revision as last seen, and since when (see _take_if_stale).
        self._seen: tuple[int, float] | None = None

    @property
    def held(self) -> bool:
        """Believed held: acquired, not lost, renewed less than three quarters of a TTL ago.

        The server drops the entry a full TTL after our last renewal reached it, so a
        standby cannot hold it while this says yes.
        """
        return (
            self.revision is not None
            and not self.lost.is_set()
            and time.monotonic() - self._renewed_at < self.ttl_seconds * 0.75
        )

    @property
    def renew_every_seconds(self) -> float:
        """Renew three times per TTL, so one lost renewal does not lose the lease."""
        return self.ttl_seconds / 3

    async def _bucket(self) -> KeyValue:
        if self._kv is not None:
            return self._kv
        try:
            self._kv = await self._js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            # No bucket TTL: each lease key carries its own, so services can share it.
            self._kv = await self._js.create_key_value(bucket=self.bucket, history=1)
        info = await self._js.stream_info(f"KV_{self.bucket}")
        self._per_message_ttl = bool(info.config.allow_msg_ttl)
        if not self._per_message_ttl:
            if not info.config.max_age:
                raise RuntimeError(
                    f"KV bucket {self.bucket!r} allows neither per-key TTL nor a bucket TTL: "
                    "a crashed holder would keep the lease forever"
                )
            self.ttl_seconds = int(info.config.max_age)
            log.info("lease.bucket_ttl", bucket=self.bucket, ttl_seconds=self.ttl_seconds)
        return self._kv

    def _ttl(self) -> float | None:
        return self.ttl_seconds if self._per_message_ttl else None

    async def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; ``False`` if someone does."""
        kv = await self._bucket()
        try:
            self.revision = await kv.create(self.key, self.holder.encode(), msg_ttl=self._ttl())
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.NotFoundError):
            # NotFound: nats-py's create found the key held, then looked it up just as its
            # TTL ran out. Either way someone held it a moment ago: try again next round.
            self.revision = None
            if not await self._take_if_stale(kv):
                return False
        self._seen = None
        self._renewed_at = time.monotonic()
        self.lost.clear()
        log.info("lease.acquired", key=self.key, holder=self.holder)
        return True

    async def _take_if_stale(self, kv: KeyValue) -> bool:
        """Take the lease from a holder that stopped renewing: its revision unchanged for a
        whole TTL here. The server's own expiry of the key can come late: after a NATS node
        is lost, a re-elected stream leader was seen to drop an expired key more than a
        minute after its TTL, and no replica became the scheduler meanwhile. A live holder
        renews every third of a TTL and steps down after half a TTL without renewing, so a
        revision that stood still for a whole TTL has no live holder; the compare-and-set
        on that revision lets one standby only take it."""
        try:
            entry = await kv.get(self.key)
        except nats.js.errors.KeyNotFoundError:
            return False  # gone now: the next round creates it
        if entry.revision is None:
            return False
        now = time.monotonic()
        if self._seen is None or self._seen[0] != entry.revision:
            self._seen = (entry.revision, now)
            return False
        if now - self._seen[1] < self.ttl_seconds:
            return False
        try:
            ack = await self._write_after(entry.revision)
        except nats.js.errors.APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                return False  # renewed, or another standby was first
            raise
        log.warning("lease.taken_from_stale", key=self.key, stale_revision=entry.revision)
        self.revision = ack.seq
        return True

    async def acquire(self, stopping: Callable[[], bool] = lambda: False) -> bool:
        """Wait until this instance holds the lease (True), or until ``stopping()`` (False):
        a cancel that a NATS call swallows (see :meth:`keeper`) still ends the wait."""
        while not stopping():
            try:
                if await self.try_acquire():
                    return True
            except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                log.warning("lease.unavailable", key=self.key, error=type(exc).__name__)
            await asyncio.sleep(self.renew_every_seconds)
        return False

    async def _write_after(self, revision: int) -> PubAck:
        """Write the key as ours (with its TTL) only if ``revision`` is still its latest."""
        return await self._js.publish(
            f"$KV.{self.bucket}.{self.key}",
            self.holder.encode(),
            headers={"Nats-Expected-Last-Subject-Sequence": str(revision)},
            msg_ttl=self._ttl(),
        )

    async def renew(self, *, again: bool = True) -> bool:
        """Extend the lease; ``False`` means it was lost (expired, or taken by another)."""
        if self.revision is None:
            return False
        await self._bucket()
        try:
            ack = await self._write_after(self.revision)
        except nats.js.errors.APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                if again and await self._still_ours():
                    return await self.renew(again=False)
                log.warning("lease.lost", key=self.key, holder=self.holder)
                self.revision = None
                return False
            raise
        self.revision = ack.seq
        self._renewed_at = time.monotonic()
        return True

    async def _still_ours(self) -> bool:
        """After a renewal that timed out but was stored (a cluster electing a leader),
        our revision is stale while the key still names us: adopt its revision (the
        caller renews from it at once, as when it was stored is unknown). Nobody else
        writes our holder id, so this never takes a lease another holds."""
        try:
            entry = await (await self._bucket()).get(self.key)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
            return False
        if entry.value != self.holder.encode() or entry.revision is None:
            return False
        self.revision = entry.revision
        log.info("lease.revision_adopted", key=self.key, revision=entry.revision)
        return True

    def keeper(self) -> Worker:
        """Renews every :attr:`renew_every_seconds` until the lease is lost (taken, or NATS
        unreachable for half a TTL), which sets :attr:`lost`. A :class:`Worker`, so that its
        stop holds even when a NATS call swallows the cancel (Python 3.11's
        ``asyncio.wait_for``): a keeper of its own kept renewing, and a stopping
        scheduler waited for it for ever."""
        return Worker(
            f"lease-keeper-{self.key}", self._renew_when_held, poll_seconds=self.renew_every_seconds
        )

    async def _renew_when_held(self) -> None:
        if self.lost.is_set():
            return
        try:
            if not await self.renew():
                self.lost.set()
        except (TimeoutError, OSError, nats.errors.Error, nats.js.errors.Error) as exc:
            if time.monotonic() - self._renewed_at >= self.ttl_seconds / 2:
                log.warning("lease.unrenewable", key=self.key, error=type(exc).__name__)
                self.revision = None
                self.lost.set()

    async def release(self) -> None:
        """Give the lease up now, so a standby need not wait for the TTL."""
        if self.revision is None:
            return
        revision, self.revision = self.revision, None
        try:
            kv = await self._bucket()
            await kv.delete(self.key, last=revision)
            log.info("lease.released", key=self.key, holder=self.holder)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("lease.release_failed", key=self.key, error=type(exc).__name__)
        with contextlib.suppress(Exception):
            self.lost.clear()
