"""The calendar sync of one booking process, built whole and started and stopped together.

The push worker runs in every replica (calendar leases keep two from writing one
calendar). The pull and reconcile jobs run on the shared :class:`LeasedScheduler` with a
memory store: the replica holding the ``booking-calendar`` lease runs them, the others
stand by. With the sync disabled nothing runs, and links are only stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from apscheduler.triggers.interval import IntervalTrigger
from nats.js.client import JetStreamContext

from services.booking.calendar.context import PUSH, SyncContext, SyncTimings
from services.booking.calendar.links import CalendarLinks
from services.booking.calendar.pull import Puller
from services.booking.calendar.push import PUSH_WAKER, PushWorker
from services.booking.calendar.reconcile import Reconciler
from shared.scheduling import JobSpec, LeasedScheduler
from shared.secretbox import SecretBox
from shared.uow import UnitOfWork

LEASE_KEY = "booking-calendar"
PULL_JOB_ID = "calendar-pull"
RECONCILE_JOB_ID = "calendar-reconcile"


class CalendarSync:
    """Push worker, pull and reconcile jobs, and the link use cases of one process."""

    def __init__(
        self,
        uow: UnitOfWork,
        box: SecretBox,
        timings: SyncTimings,
        *,
        enabled: bool,
        jetstream: Callable[[], JetStreamContext],
        connected: asyncio.Event,
        lease_ttl_seconds: float,
    ) -> None:
        self.enabled = enabled
        self.context = SyncContext(uow, box, timings)
        self.pusher = PushWorker(self.context)
        self.puller = Puller(self.context)
        self.reconciler = Reconciler(self.context, wake_pushes=self.pusher.wake)
        self.links = CalendarLinks(self.context, on_created=self.try_link if enabled else None)
        self.scheduler = LeasedScheduler(
            key=LEASE_KEY,
            gate=uow.gate,
            jetstream=jetstream,
            connected=connected,
            lease_ttl_seconds=lease_ttl_seconds,
            on_active=self._plan_jobs,
        )
        if enabled:
            uow.on_commit(PUSH_WAKER, self.pusher.wake)

    @property
    def box(self) -> SecretBox:
        return self.context.box

    def start(self) -> None:
        if self.enabled:
            self.pusher.start()
            self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()
        await self.pusher.stop()
        await self.context.close()

    def try_link(self, link_id: str, direction: str) -> None:
        """Try a new link's calendar at once, in the background: a push link is
        reconciled (which writes its queued sessions after), a pull link read."""
        if direction == PUSH:
            self.context.in_background(self.reconciler.reconcile_link(link_id))
        else:
            self.context.in_background(self.puller.pull_link(link_id))
        self.pusher.wake()

    async def _plan_jobs(self) -> None:
        """The periodic jobs, added whenever this replica takes the lease. A late run is
        still worth doing, once (coalesce); one more than an interval late is skipped
        because the next one is due by then anyway."""
        timings = self.context.timings
        now = self.context.clock()
        await self.scheduler.add_jobs(
            [
                _every(
                    self.puller.pull_all,
                    PULL_JOB_ID,
                    timings.pull_interval_seconds,
                    name="pull busy time from outside calendars",
                    first=now,
                ),
                _every(
                    self.reconciler.reconcile_all,
                    RECONCILE_JOB_ID,
                    timings.reconcile_interval_seconds,
                    name="repair drift in push calendars",
                ),
            ]
        )


def _every(
    func: Callable[[], object],
    job_id: str,
    seconds: float,
    *,
    name: str,
    first: datetime | None = None,
) -> JobSpec:
    options: dict[str, object] = {"name": name}
    if first is not None:
        options["next_run_time"] = first
    return JobSpec(
        func=func,
        id=job_id,
        trigger=IntervalTrigger(seconds=seconds),
        misfire_grace_time=max(1, int(seconds)),
        options=options,
    )
