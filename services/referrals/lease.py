"""A lease in NATS KV: at most one holder at a time, and it lapses when the holder dies.

The key (``referrals-scheduler`` in bucket ``leases``) is created only if absent, renewed
with a compare-and-set on its last revision, and carries a per-message TTL: if the holder
stops renewing (crash, partition) the key vanishes after the TTL and a standby's create
succeeds. A holder that fails to renew has lost the lease and must stop acting at once.

Kept inside the referrals service for now; nothing here is referrals-specific, so it can
move to ``shared`` as is.
"""

from __future__ import annotations

import os
import socket
import uuid

import nats.errors
import nats.js.errors
import structlog
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

log = structlog.get_logger(__name__)

#: JetStream error code of a failed "expected last subject sequence" check.
WRONG_LAST_SEQUENCE = (10071, 10164)


class Lease:
    def __init__(
        self,
        js: JetStreamContext,
        *,
        bucket: str,
        key: str,
        ttl_seconds: int,
        holder: str | None = None,
    ) -> None:
        self._js = js
        self.bucket = bucket
        self.key = key
        self.ttl_seconds = max(1, int(ttl_seconds))
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._kv: KeyValue | None = None
        self._per_message_ttl = True
        self.revision: int | None = None

    @property
    def held(self) -> bool:
        return self.revision is not None

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
        except nats.js.errors.KeyWrongLastSequenceError:
            self.revision = None
            return False
        log.info("lease.acquired", key=self.key, holder=self.holder)
        return True

    async def renew(self) -> bool:
        """Extend the lease; ``False`` means it was lost (expired, or taken by another)."""
        if self.revision is None:
            return False
        await self._bucket()
        try:
            ack = await self._js.publish(
                f"$KV.{self.bucket}.{self.key}",
                self.holder.encode(),
                headers={"Nats-Expected-Last-Subject-Sequence": str(self.revision)},
                msg_ttl=self._ttl(),
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                log.warning("lease.lost", key=self.key, holder=self.holder)
                self.revision = None
                return False
            raise
        self.revision = ack.seq
        return True

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
