"""What every reminders use case works with, built whole by the composition root (app.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from services.reminders.aftercare import AftercareLibrary
from services.reminders.batch import GroupCommit, Reads
from services.reminders.links import Links
from services.reminders.rules import RulesCache
from services.reminders.sender import Sender
from services.reminders.settings import RemindersSettings
from shared.lease import instance_id
from shared.scheduling import LeasedScheduler
from shared.uow import UnitOfWork

#: What the after-commit hook that wakes the planner is called (see ``shared.uow``).
PLANNER = "planner"


@dataclass
class Reminders:
    """The service's context: settings, the unit of work, the adapters, the scheduler."""

    settings: RemindersSettings
    uow: UnitOfWork
    sender: Sender
    links: Links
    aftercare: AftercareLibrary
    scheduler: LeasedScheduler
    #: Small writes of concurrent tasks share a transaction (see batch.py).
    batch: GroupCommit
    #: Reads of one kind by concurrent tasks share a read transaction (the session jobs
    #: that fire together: ``firing``).
    reads: Reads
    rules: RulesCache
    #: Ledger keys this process is sending right now (a reconcile must leave them alone).
    in_flight: set[str] = field(default_factory=set)
    #: Who this process is in the ledger's send leases.
    instance: str = field(default_factory=instance_id)
    #: Session jobs running now, and whether a re-plan put the same job back meanwhile
    #: (the planner cannot see a ledger row the job has not committed yet).
    firing: dict[str, bool] = field(default_factory=dict)
    #: Jobs working at once: a thousand due together queue here, not on the database.
    job_slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.job_slots = asyncio.Semaphore(self.settings.sms_concurrency)

    def now(self) -> datetime:
        return self.uow.clock()

    def is_active(self) -> bool:
        """This process holds the scheduler lease: it decides what is due."""
        return self.scheduler.active

    async def lease_back(self) -> bool:
        """Whether this instance is (again) the active one within one lease (a renewal may
        be late on a busy moment)."""
        step = self.settings.scheduler_lease_seconds / 20
        for _ in range(20):
            if self.is_active():
                return True
            if self.scheduler.scheduler is None:
                return False  # stood down
            await asyncio.sleep(step)
        return self.is_active()

    @property
    def default_zone(self) -> ZoneInfo:
        return ZoneInfo(self.settings.clinic_timezone)
