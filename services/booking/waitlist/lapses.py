"""The loop that lapses waitlist offers: one replica at a time, quiet while idle.

A :class:`~shared.worker.Worker` that sleeps until the earliest open offer's time is up
(woken after every commit that made an offer in this process, and looking again every
``poll_seconds`` for offers other replicas made). Only the holder of the NATS KV lease
``booking-scheduler`` lapses offers; the others try to take the lease now and then. The
lapse itself is a conditional UPDATE, so even two holders could not lapse one offer twice
or lapse an offer that was just claimed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext

from services.booking.usecases import Booking
from services.booking.waitlist import offers
from shared.lease import Lease
from shared.worker import Worker

#: Booking's one lease key (NATS permissions allow ``<service>-scheduler`` only).
LEASE_KEY = "booking-scheduler"

BATCH = 100


class Lapses:
    def __init__(
        self,
        app: Booking,
        *,
        jetstream: Callable[[], JetStreamContext],
        connected: asyncio.Event,
        lease_ttl_seconds: float,
        poll_seconds: float,
    ) -> None:
        self._app = app
        self._jetstream = jetstream
        self._connected = connected
        self._ttl = lease_ttl_seconds
        self.lease: Lease | None = None
        self._renewed = 0.0
        self.lapsed = 0
        self.worker = Worker("waitlist-lapses", self._step, poll_seconds=poll_seconds)

    @property
    def active(self) -> bool:
        return self.lease is not None and self.lease.held

    def wake(self) -> None:
        self.worker.wake()

    def start(self) -> None:
        self.worker.start()

    async def stop(self) -> None:
        await self.worker.stop()
        if self.lease is not None:
            await self.lease.release()

    async def _step(self) -> float | bool:
        if not self._connected.is_set():
            return 1.0
        lease = await self._hold()
        if lease is None:
            return self._ttl / 3  # standing by: try for the lease again later
        lapsed = await offers.lapse_due(self._app, batch=BATCH)
        self.lapsed += lapsed
        if lapsed == BATCH:
            return True
        renew_in = max(0.0, lease.renew_every_seconds - (time.monotonic() - self._renewed))
        upcoming = await offers.next_expiry(self._app)
        if upcoming is None:
            return renew_in
        return min(renew_in, max(0.01, (upcoming - self._app.clock()).total_seconds()))

    async def _hold(self) -> Lease | None:
        """The lease if this replica holds it (renewed when due), else ``None``."""
        if self.lease is None:
            self.lease = Lease(self._jetstream(), key=LEASE_KEY, ttl_seconds=self._ttl)
        lease = self.lease
        try:
            if lease.held:
                if time.monotonic() - self._renewed >= lease.renew_every_seconds:
                    if not await lease.renew():
                        return None
                    self._renewed = time.monotonic()
                return lease if lease.held else None
            if await lease.try_acquire():
                self._renewed = time.monotonic()
                return lease
        except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError):
            return None
        return None
