"""Planning: sessions and referral updates marked pending become jobs in the job store
(only the active instance plans), and on becoming active the jobs a crash may have lost
come back. A job carries ids only; what it does when it fires is ``firing.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import cast

import structlog
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.reminders import db, domain
from services.reminders.context import Reminders
from services.reminders.facts import client_location, state_of
from services.reminders.jobs import REFERRAL_JOB, SESSION_JOB, referral_job_id, session_job_id
from services.reminders.rules import RulesDocument, load_rules
from services.reminders.waitlist import mark_planned, pending_offers
from shared.scheduling import JobSpec
from shared.worker import StepResult

log = structlog.get_logger(__name__)

#: Job store writes in one go: each blocks the event loop on SQLite.
JOBS_PER_PASS = 200
#: Sessions (and referral updates) planned per step: their jobs are stored in one
#: statement, so a larger pass only spreads its fixed reads over more sessions.
PLAN_BATCH = 200


_sessions = cast(Table, db.Session.__table__)
_MARK_PLANNED = (
    update(_sessions)
    .where(_sessions.c.id == bindparam("b_id"), _sessions.c.change_seq == bindparam("b_seq"))
    .values(plan_pending=False, planned_seq=bindparam("b_seq"), planned_jobs=bindparam("b_jobs"))
)
_NOTE_JOBS = (
    update(_sessions)
    .where(_sessions.c.id == bindparam("b_id"), _sessions.c.change_seq != bindparam("b_seq"))
    .values(planned_jobs=bindparam("b_jobs"))
)


def job_for(session_id: str, planned: domain.Planned) -> JobSpec:
    """A job at ``run_at``; one quiet hours make pointless still fires at ``due``, where it
    is dropped and logged."""
    if planned.useful:
        run_at, grace = planned.run_at, planned.grace_seconds
    else:
        run_at = planned.due
        grace = max(1, int((planned.deadline - planned.due).total_seconds()))
    return JobSpec(
        func=SESSION_JOB,
        id=session_job_id(session_id, planned.rule),
        run_date=run_at,
        args=(session_id, planned.rule),
        misfire_grace_time=grace,
    )


async def referral_plan(
    session: AsyncSession, app: Reminders, rules: RulesDocument, notice: db.ReferralNotice
) -> domain.Planned:
    location_id, _, _, zone = await client_location(session, notice.client_id)
    quiet = rules.for_location(location_id).quiet_hours
    return domain.plan_referral(
        notice.referral_id, notice.status, notice.happened_at, zone or app.default_zone, quiet
    )


def referral_job(notice: db.ReferralNotice, planned: domain.Planned) -> JobSpec:
    return JobSpec(
        func=REFERRAL_JOB,
        id=referral_job_id(notice.id),
        run_date=planned.run_at if planned.useful else planned.due,
        args=(notice.id,),
        misfire_grace_time=planned.grace_seconds,
    )


def deferred(job: JobSpec, until: datetime) -> JobSpec:
    return replace(job, run_date=until)


async def _keys_with_rows(session: AsyncSession, session_ids: Sequence[str]) -> set[str]:
    if not session_ids:
        return set()
    rows = await session.scalars(
        select(db.Message.key).where(
            db.Message.session_id.in_(session_ids), db.Message.key.is_not(None)
        )
    )
    return {k for k in rows if k}


async def plan_pending(app: Reminders, limit: int = PLAN_BATCH) -> int:
    """Plan one batch of pending sessions and referral updates; returns how many."""
    if not app.is_active():
        return 0
    adds: list[JobSpec] = []
    removes: list[str] = []
    done: list[tuple[str, int, list[str]]] = []
    job_keys: dict[str, str] = {}
    async with app.uow.read() as session:
        rows = (
            await session.scalars(
                select(db.Session).where(db.Session.plan_pending.is_(True)).limit(limit)
            )
        ).all()
        # The rules after the sessions: a rules change bumps every session's change_seq in
        # its commit, so rules read first could be older than the change_seq read next
        # (on PostgreSQL each statement sees what is committed when it starts), and the
        # session would be marked planned under rules it never saw.
        rules = await load_rules(session, app.settings)
        keys = await _keys_with_rows(session, [r.id for r in rows])
        for row in rows:
            planned = domain.plan_session(state_of(row), rules.for_location(row.location_id))
            unsent = [p for p in planned if p.key not in keys]
            jobs = [job_for(row.id, p) for p in unsent]
            job_keys.update({job.id: p.key for job, p in zip(jobs, unsent, strict=True)})
            wanted = sorted({j.id for j in jobs})
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
        for notice in notices:
            adds.append(referral_job(notice, await referral_plan(session, app, rules, notice)))
    offers, offer_jobs = await pending_offers(app, limit)
    adds.extend(offer_jobs)
    if not rows and not notices and not offers:
        return 0
    if removes and not await app.scheduler.remove_jobs(removes):
        return 0  # stood down: the next holder plans them
    if not await app.scheduler.add_jobs(adds):
        return 0
    await _drop_sent_meanwhile(app, job_keys)
    async with app.uow.write() as session:
        if done:
            params = [{"b_id": sid, "b_seq": seq, "b_jobs": wanted} for sid, seq, wanted in done]
            # Two statements of many rows for the whole pass (one per session was the
            # planner's largest cost): planned where nothing changed meanwhile; where a
            # change came in, only the jobs now stored (it stays pending).
            await session.execute(_MARK_PLANNED, params)
            await session.execute(_NOTE_JOBS, params)
        if notices:
            await session.execute(
                update(db.ReferralNotice)
                .where(db.ReferralNotice.id.in_([n.id for n in notices]))
                .values(plan_pending=False)
            )
    await mark_planned(app, offers)
    return len(rows) + len(notices) + len(offers)


async def _drop_sent_meanwhile(app: Reminders, job_keys: dict[str, str]) -> None:
    """A job may have claimed its message between this pass's read of the ledger and its
    adding the job back: remove those copies now (or, for a job still running, when it
    has settled its message: ``firing``), so no job waits for a message that went."""
    if not job_keys:
        return
    for job_id in job_keys:
        # Running, or handed to a task that has not started yet (it keeps the mark).
        if job_id in app.firing or app.scheduler.running(job_id):
            app.firing[job_id] = True
    async with app.uow.read() as session:
        claimed = await session.scalars(
            select(db.Message.key).where(db.Message.key.in_(list(job_keys.values())))
        )
        sent = set(claimed)
    if sent:
        await app.scheduler.remove_jobs([j for j, key in job_keys.items() if key in sent])


async def plan_step(app: Reminders) -> StepResult:
    """The planner worker's step: again at once after a batch, else wait for a wake-up."""
    return await plan_pending(app) > 0


async def repair_jobs(app: Reminders) -> int:
    """On becoming active: re-add the jobs a crash may have lost.

    APScheduler removes a date job when it hands it to the executor, before the job has
    written its ledger row; a process killed in between loses that message. Here every
    recent session whose planned messages have no ledger row gets its missing jobs back
    (a job whose time has passed runs at once if it is still useful).
    """
    now = app.now()
    async with app.uow.read() as session:
        existing: set[str] = set(await session.scalars(select(db.apscheduler_jobs.c.id)))
        rules = await load_rules(session, app.settings)
        rows = (
            await session.scalars(
                select(db.Session).where(db.Session.end_at > now - domain.REPAIR_WINDOW)
            )
        ).all()
        keys = await _keys_with_rows(session, [r.id for r in rows])
        missing = [
            job
            for row in rows
            for planned in domain.plan_session(state_of(row), rules.for_location(row.location_id))
            if planned.key not in keys and (job := job_for(row.id, planned)).id not in existing
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
            job = referral_job(notice, planned)
            if sent is None and job.id not in existing:
                missing.append(job)
    for start in range(0, len(missing), JOBS_PER_PASS):
        # In chunks: on SQLite each job store write blocks the event loop (the lease must renew).
        if not await app.scheduler.add_jobs(missing[start : start + JOBS_PER_PASS]):
            return start
        await asyncio.sleep(0)
    if missing:
        log.warning("jobs.repaired", count=len(missing))
    return len(missing)


async def reschedule(app: Reminders, job: JobSpec) -> None:
    await app.scheduler.add_jobs([job])
