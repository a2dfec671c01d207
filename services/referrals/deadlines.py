"""Referral deadlines: jobs of the one leased scheduler (``shared.scheduling``).

A referral waiting for its partner's answer gets two jobs with deterministic ids:
``<referral_id>:accept-reminder`` at ``remind_at`` and ``<referral_id>:expire`` at
``expire_at``. A job carries ids only; when it fires it re-reads the referral and acts only
if it is still unanswered (an accepted referral's jobs fire and do nothing).

Any replica may send a referral, but only the process holding the lease runs the scheduler
(a job store is never shared by two schedulers). The referral row records whether its
jobs exist (``deadlines_scheduled``); while this process is active, a planner
(:class:`shared.worker.Worker`) plans the missing ones when a commit that sent a referral
wakes it (the ``"deadlines"`` hook), every few seconds, and at once when it takes over.

Misfire policy: a reminder that is late (the process was down) is still sent until the
expiry is due, then it is pointless; an expiry runs however late (coalesced).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog
from nats.js.client import JetStreamContext

from services.referrals.usecases import Referrals
from services.referrals.usecases import deadlines as usecases
from services.referrals.usecases.deadlines import DeadlinePlan
from shared.gate import Gate
from shared.scheduling import JobSpec, JobStoreConfig, LeasedScheduler
from shared.worker import StepResult, Worker

log = structlog.get_logger(__name__)

REMINDER = "accept-reminder"
EXPIRY = "expire"
#: The persisted reference of every deadline job (jobs already stored name it: keep it).
JOB_FUNC = "services.referrals.deadlines:deadline_due"
#: Referrals planned per transaction.
PLAN_BATCH = 200
#: How long a woken planner waits for more referrals to plan with them. The first
#: deadline is hours away; planning each commit's referral on its own cost a read, a
#: job store write per job and a write transaction (taking SQLite's one write lock from
#: the front desk) per referral under load.
GATHER_SECONDS = 1.0


async def deadline_due(kind: str, referral_id: str) -> None:
    """What a stored job names. Jobs run the handler the scheduler binds to it, never this."""
    raise RuntimeError(f"deadline job {referral_id}:{kind} ran outside the bound executor")


def job_id(referral_id: str, kind: str) -> str:
    return f"{referral_id}:{kind}"


def jobs_for(plans: Sequence[DeadlinePlan], expire_after_hours: float) -> list[JobSpec]:
    """The two jobs of each referral, with the misfire policy: a late reminder still runs
    until the expiry is due (``expire_after_hours`` later), a late expiry always runs."""
    late_reminder_seconds = max(int(expire_after_hours * 3600), 1)
    jobs: list[JobSpec] = []
    for plan in plans:
        jobs.append(
            JobSpec(
                func=JOB_FUNC,
                id=job_id(plan.referral_id, REMINDER),
                run_date=plan.remind_at,
                args=(REMINDER, plan.referral_id),
                misfire_grace_time=late_reminder_seconds,
            )
        )
        jobs.append(
            JobSpec(
                func=JOB_FUNC,
                id=job_id(plan.referral_id, EXPIRY),
                run_date=plan.expire_at,
                args=(EXPIRY, plan.referral_id),
                misfire_grace_time=None,
            )
        )
    return jobs


class Deadlines:
    """The referrals' deadline jobs and their planner, behind the scheduler's lease; the
    scheduler's handlers and hooks are this object's methods, so it is whole at once."""

    def __init__(
        self,
        app: Referrals,
        *,
        store: JobStoreConfig,
        poll_seconds: float,
        gate: Gate,
        jetstream: Callable[[], JetStreamContext],
        connected: asyncio.Event,
        lease_key: str,
        lease_bucket: str,
        lease_ttl_seconds: float,
    ) -> None:
        self._app = app
        self._gather_seconds = min(GATHER_SECONDS, poll_seconds)
        self.planner = Worker("deadline-planner", self._plan_missing, poll_seconds=poll_seconds)
        self.scheduler = LeasedScheduler(
            key=lease_key,
            gate=gate,
            jetstream=jetstream,
            connected=connected,
            lease_ttl_seconds=lease_ttl_seconds,
            lease_bucket=lease_bucket,
            store=store,
            handlers={JOB_FUNC: self._on_deadline},
            on_active=self._on_active,
            on_standby=self.planner.stop,
        )
        #: Ids of the jobs this process ran (tests and ops look).
        self.fired: list[str] = []

    @property
    def active(self) -> bool:
        return self.scheduler.active

    def job_ids(self) -> list[str]:
        return self.scheduler.job_ids()

    def wake(self) -> None:
        """A commit may have sent a referral: plan its deadlines soon (if active)."""
        self.planner.wake()

    def start(self) -> None:
        self.scheduler.start()

    async def stop(self) -> None:
        await self.planner.stop()
        await self.scheduler.stop()

    async def _on_active(self) -> None:
        self.planner.start()  # plans at once whatever the previous holder left unplanned

    async def _plan_missing(self) -> StepResult:
        """Put the missing jobs of one batch of referrals in the store; ``True`` if full."""
        await asyncio.sleep(self._gather_seconds)  # let a burst's referrals come together
        plans = await usecases.unplanned_deadlines(self._app, limit=PLAN_BATCH)
        if not plans:
            return None
        added = await self.scheduler.add_jobs(jobs_for(plans, self._app.expire_after_hours))
        if not added or not self.scheduler.active:
            # Standing down (maybe while adding): the next holder plans them again.
            return None
        await usecases.mark_deadlines_planned(self._app, [p.referral_id for p in plans])
        log.debug("scheduler.planned", referrals=len(plans))
        return len(plans) == PLAN_BATCH

    async def _on_deadline(self, kind: str, referral_id: str) -> None:
        if kind == REMINDER:
            acted = await usecases.remind_partner(self._app, referral_id)
        elif kind == EXPIRY:
            acted = await usecases.expire_referral(self._app, referral_id)
        else:
            log.error("scheduler.unknown_job", kind=kind, referral_id=referral_id)
            return
        self.fired.append(job_id(referral_id, kind))
        log.info("scheduler.deadline", kind=kind, referral_id=referral_id, acted=acted)
