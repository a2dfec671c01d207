"""One active scheduler: a lease in a NATS KV bucket whose entries expire.

The holder writes its id with ``create`` (only if the key is absent) and renews it with
``update`` (only if the revision is still its own) every third of the lease. The bucket's
TTL removes an entry nobody renews, so when the holder dies (even by ``kill -9``) a
standby's ``create`` succeeds within one lease. A holder that cannot renew for half a
lease steps down on its own, well before anyone else can take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid

import nats.errors
import nats.js.errors
import structlog
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

log = structlog.get_logger(__name__)

BUCKET = "reminders_scheduler"
KEY = "leader"


def instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Lease:
    def __init__(self, js: JetStreamContext, ttl_seconds: float, holder: str | None = None) -> None:
        self.js = js
        self.ttl = ttl_seconds
        self.holder = holder or instance_id()
        self.revision: int | None = None
        self._renewed_at = 0.0
        self.lost = asyncio.Event()
        self._kv: KeyValue | None = None

    @property
    def held(self) -> bool:
        """Believed held: acquired, not lost, renewed less than three quarters of a lease ago.

        The server drops the entry a full lease after our last renewal reached it, so a
        standby cannot hold it while this says yes (a quarter of a lease to spare).
        """
        return (
            self.revision is not None
            and not self.lost.is_set()
            and time.monotonic() - self._renewed_at < self.ttl * 0.75
        )

    async def _bucket(self) -> KeyValue:
        if self._kv is not None:
            return self._kv
        try:
            kv = await self.js.key_value(BUCKET)
            stream = f"KV_{BUCKET}"
            info = await self.js.stream_info(stream)
            if info.config.max_age != self.ttl:
                info.config.max_age = self.ttl
                info.config.duplicate_window = min(self.ttl, 120.0)
                await self.js.update_stream(info.config)
        except nats.js.errors.BucketNotFoundError:
            kv = await self.js.create_key_value(
                api.KeyValueConfig(bucket=BUCKET, ttl=self.ttl, history=1)
            )
        self._kv = kv
        return kv

    async def try_acquire(self) -> bool:
        kv = await self._bucket()
        try:
            self.revision = await kv.create(KEY, self.holder.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        self._renewed_at = time.monotonic()
        self.lost.clear()
        log.info("lease.acquired", holder=self.holder)
        return True

    async def acquire(self) -> None:
        """Wait until this instance holds the lease."""
        while True:
            try:
                if await self.try_acquire():
                    return
            except (nats.errors.Error, OSError) as exc:
                log.warning("lease.unavailable", error=type(exc).__name__)
            await asyncio.sleep(self.ttl / 4)

    async def keep(self) -> None:
        """Renew until the lease is lost (another holder, or too long without NATS)."""
        while not self.lost.is_set():
            await asyncio.sleep(self.ttl / 3)
            try:
                kv = await self._bucket()
                self.revision = await kv.update(KEY, self.holder.encode(), last=self.revision)
                self._renewed_at = time.monotonic()
            except nats.js.errors.KeyWrongLastSequenceError:
                log.warning("lease.taken", holder=self.holder)
                self.lost.set()
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                if time.monotonic() - self._renewed_at >= self.ttl / 2:
                    log.warning("lease.expired", holder=self.holder, error=type(exc).__name__)
                    self.lost.set()

    async def release(self) -> None:
        """Give the lease up at once so a standby need not wait for it to expire."""
        if self.revision is None:
            return
        with contextlib.suppress(Exception):
            kv = await self._bucket()
            await kv.delete(KEY, last=self.revision)
        self.revision = None
        self.lost.set()
