"""Planning: sessions marked pending become APScheduler jobs (only the active instance
plans), and on becoming active the jobs a crash may have lost come back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.reminders import db, domain
from services.reminders.scheduler import (
    REFERRAL_JOB,
    SESSION_JOB,
    referral_job_id,
    remove_quietly,
    session_job_id,
)
from services.reminders.usecases import (
    REPAIR_WINDOW,
    Reminders,
    RulesDocument,
    client_location,
    load_rules,
)

log = structlog.get_logger(__name__)

#: Job store writes in one go: each blocks the event loop (about 1.4 ms on PostgreSQL).
JOBS_PER_PASS = 200


def state_of(row: db.Session) -> domain.SessionState:
    return domain.SessionState(
        session_id=row.id,
        version=row.version,
        status=row.status,
        start=row.start_at,
        end=row.end_at,
        timezone=row.location_timezone,
        booked_at=row.booked_at,
        changed_at=row.changed_at,
        rescheduled_at=row.rescheduled_at,
        rescheduled_version=row.rescheduled_version,
        cancelled_at=row.cancelled_at,
    )


@dataclass
class JobPlan:
    job_id: str
    func: str
    args: list[str]
    run_at: datetime
    grace_seconds: int


def job_for(session_id: str, planned: domain.Planned) -> JobPlan:
    """A job at ``run_at``; one quiet hours make pointless still fires at ``due``, where it
    is dropped and logged."""
    if planned.useful:
        run_at, grace = planned.run_at, planned.grace_seconds
    else:
        run_at = planned.due
        grace = max(1, int((planned.deadline - planned.due).total_seconds()))
    return JobPlan(
        session_job_id(session_id, planned.rule),
        SESSION_JOB,
        [session_id, planned.rule],
        run_at,
        grace,
    )


async def _keys_with_rows(session: AsyncSession, session_ids: Sequence[str]) -> set[str]:
    if not session_ids:
        return set()
    rows = await session.scalars(
        select(db.Message.key).where(
            db.Message.session_id.in_(session_ids), db.Message.key.is_not(None)
        )
    )
    return {k for k in rows if k}


async def plan_pending(app: Reminders, limit: int = 50) -> int:
    """Plan one batch of pending sessions and referral updates; returns how many."""
    scheduler = app.scheduler
    if scheduler is None:
        return 0
    adds: list[JobPlan] = []
    removes: list[str] = []
    done: list[tuple[str, int, list[str]]] = []
    async with app.read() as session:
        rules = await load_rules(session, app.settings)
        rows = (
            await session.scalars(
                select(db.Session).where(db.Session.plan_pending.is_(True)).limit(limit)
            )
        ).all()
        keys = await _keys_with_rows(session, [r.id for r in rows])
        for row in rows:
            planned = domain.plan_session(state_of(row), rules.for_location(row.location_id))
            jobs = [job_for(row.id, p) for p in planned if p.key not in keys]
            wanted = sorted({j.job_id for j in jobs})
            adds.extend(jobs)
            removes.extend(j for j in row.planned_jobs or [] if j not in wanted)
            done.append((row.id, row.change_seq, wanted))
        notices = (
            await session.scalars(
                select(db.ReferralNotice)
                .where(db.ReferralNotice.plan_pending.is_(True))
                .limit(limit)
            )
        ).all()
        notice_jobs = [await referral_job(session, app, rules, n) for n in notices]
    if not rows and not notices:
        return 0
    async with app.gate.exclusive():
        for job_id in removes:
            remove_quietly(scheduler, job_id)
        for job in [*adds, *notice_jobs]:
            scheduler.add_job(
                job.func,
                trigger="date",
                run_date=job.run_at,
                id=job.job_id,
                args=job.args,
                replace_existing=True,
                misfire_grace_time=job.grace_seconds,
            )
    async with app.write() as session:
        for session_id, seq, wanted in done:
            result = await session.execute(
                update(db.Session)
                .where(db.Session.id == session_id, db.Session.change_seq == seq)
                .values(plan_pending=False, planned_seq=seq, planned_jobs=wanted)
            )
            if not getattr(result, "rowcount", 0):
                await session.execute(
                    update(db.Session)
                    .where(db.Session.id == session_id)
                    .values(planned_jobs=wanted)
                )
        if notices:
            await session.execute(
                update(db.ReferralNotice)
                .where(db.ReferralNotice.id.in_([n.id for n in notices]))
                .values(plan_pending=False)
            )
    return len(rows) + len(notices)


async def referral_plan(
    session: AsyncSession, app: Reminders, rules: RulesDocument, notice: db.ReferralNotice
) -> domain.Planned:
    location_id, _, _, zone = await client_location(session, notice.client_id)
    quiet = rules.for_location(location_id).quiet_hours
    return domain.plan_referral(
        notice.referral_id, notice.status, notice.happened_at, zone or app.default_zone, quiet
    )


async def referral_job(
    session: AsyncSession, app: Reminders, rules: RulesDocument, notice: db.ReferralNotice
) -> JobPlan:
    planned = await referral_plan(session, app, rules, notice)
    run_at = planned.run_at if planned.useful else planned.due
    return JobPlan(
        referral_job_id(notice.id), REFERRAL_JOB, [notice.id], run_at, planned.grace_seconds
    )


async def repair_jobs(app: Reminders) -> int:
    """On becoming active: re-add the jobs a crash may have lost.

    APScheduler removes a date job when it hands it to the executor, before the job has
    written its ledger row; a process killed in between loses that message. Here every
    recent session whose planned messages have no ledger row gets its missing jobs back
    (a job whose time has passed runs at once if it is still useful).
    """
    scheduler = app.scheduler
    if scheduler is None:
        return 0
    now = app.clock()
    async with app.read() as session:
        existing: set[str] = set(await session.scalars(select(db.apscheduler_jobs.c.id)))
        rules = await load_rules(session, app.settings)
        rows = (
            await session.scalars(select(db.Session).where(db.Session.end_at > now - REPAIR_WINDOW))
        ).all()
        keys = await _keys_with_rows(session, [r.id for r in rows])
        missing = [
            job
            for row in rows
            for planned in domain.plan_session(state_of(row), rules.for_location(row.location_id))
            if planned.key not in keys and (job := job_for(row.id, planned)).job_id not in existing
        ]
        notices = (
            await session.scalars(
                select(db.ReferralNotice).where(
                    db.ReferralNotice.happened_at > now - domain.REFERRAL_USEFUL_FOR
                )
            )
        ).all()
        for notice in notices:
            planned = await referral_plan(session, app, rules, notice)
            sent = await session.scalar(select(db.Message.id).where(db.Message.key == planned.key))
            job = await referral_job(session, app, rules, notice)
            if sent is None and job.job_id not in existing:
                missing.append(job)
    if not missing:
        return 0
    for start in range(0, len(missing), JOBS_PER_PASS):
        # In chunks: each job store write blocks the event loop (the lease must renew).
        async with app.gate.exclusive():
            for job in missing[start : start + JOBS_PER_PASS]:
                scheduler.add_job(
                    job.func,
                    trigger="date",
                    run_date=job.run_at,
                    id=job.job_id,
                    args=job.args,
                    replace_existing=True,
                    misfire_grace_time=job.grace_seconds,
                )
        await asyncio.sleep(0)
    if missing:
        log.warning("jobs.repaired", count=len(missing))
    return len(missing)


async def run_planner(app: Reminders) -> None:
    """Plan pending work until cancelled: woken after commits, polling otherwise."""
    while True:
        try:
            planned = await plan_pending(app)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("planner.failed")
            planned = 0
            await asyncio.sleep(1.0)
        if planned:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                app.planner_wakeup.wait(), timeout=app.settings.planner_poll_seconds
            )
        app.planner_wakeup.clear()


async def reschedule(app: Reminders, job: JobPlan) -> None:
    if app.scheduler is None:
        return
    async with app.gate.exclusive():
        app.scheduler.add_job(
            job.func,
            trigger="date",
            run_date=job.run_at,
            id=job.job_id,
            args=job.args,
            replace_existing=True,
            misfire_grace_time=job.grace_seconds,
        )
