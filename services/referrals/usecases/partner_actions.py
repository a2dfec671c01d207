"""What a partner does with its API key: read its referrals (which acknowledges them),
accept, decline, schedule the first visit, complete with a report, report a no-show or
an interim note. Another partner's referral, or one not sent yet, is simply not found."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals import db, domain, queries
from services.referrals.domain import BusinessStatus, TaskStatus
from services.referrals.queries import ReferralRecord, record_of
from services.referrals.usecases.context import Referrals
from services.referrals.usecases.lifecycle import (
    apply,
    lock_plan,
    lock_referral,
    plan_changed,
    record_history,
)
from shared.errors import NotFound
from shared.pagination import PageRequest
from shared.timeutil import as_utc


def _actor(partner_id: str) -> str:
    return f"partner:{partner_id}"


async def _partner_referral(
    session: AsyncSession, partner_id: str, referral_id: str
) -> db.Referral:
    row = await lock_referral(session, referral_id)
    if row.partner_id != partner_id or row.task_status == TaskStatus.DRAFT:
        raise NotFound("referral", referral_id)
    return row


async def _acknowledge(app: Referrals, partner_id: str, referral_ids: list[str]) -> None:
    """The partner has read these: requested → received (its event tells the front desk)."""
    async with app.uow.write() as session:
        for referral_id in referral_ids:
            row = await _partner_referral(session, partner_id, referral_id)
            if row.task_status == TaskStatus.REQUESTED:
                await apply(
                    session,
                    app,
                    row,
                    "receive",
                    actor=_actor(partner_id),
                    updates={"received_at": app.clock()},
                )


def _unread(records: list[ReferralRecord]) -> list[str]:
    return [r.referral.id for r in records if r.referral.task_status == TaskStatus.REQUESTED]


async def partner_referrals(
    app: Referrals, partner_id: str, status: str | None, *, page: PageRequest
) -> list[ReferralRecord]:
    """A page of the partner's referrals, newest first, plus the first of the next page (to
    tell whether one follows). Reading one acknowledges its receipt; the look-ahead row is
    not read, so it is not acknowledged."""
    records = await queries.partner_records(app, partner_id, status, page=page)
    unread = _unread(records[: page.limit])
    if unread:
        await _acknowledge(app, partner_id, unread)
        records = await queries.partner_records(app, partner_id, status, page=page)
    return records


async def partner_referral(app: Referrals, partner_id: str, referral_id: str) -> ReferralRecord:
    record = await queries.partner_record(app, partner_id, referral_id)
    if _unread([record]):
        await _acknowledge(app, partner_id, [referral_id])
        record = await queries.partner_record(app, partner_id, referral_id)
    return record


async def _transition(
    app: Referrals,
    partner_id: str,
    referral_id: str,
    action: str,
    *,
    note: str | None = None,
    status_reason: str | None = None,
    updates: dict[str, Any] | None = None,
    after: Callable[[AsyncSession, db.Referral], Awaitable[None]] | None = None,
) -> ReferralRecord:
    async with app.uow.write() as session:
        row = await _partner_referral(session, partner_id, referral_id)
        await apply(
            session,
            app,
            row,
            action,
            actor=_actor(partner_id),
            note=note,
            status_reason=status_reason,
            updates=updates,
        )
        if after is not None:
            await after(session, row)
        return await record_of(session, row)


async def accept(
    app: Referrals, partner_id: str, referral_id: str, note: str | None
) -> ReferralRecord:
    return await _transition(
        app, partner_id, referral_id, "accept", note=note, updates={"answered_at": app.clock()}
    )


async def decline(app: Referrals, partner_id: str, referral_id: str, reason: str) -> ReferralRecord:
    return await _transition(
        app,
        partner_id,
        referral_id,
        "decline",
        note=reason,
        status_reason=reason,
        updates={"answered_at": app.clock()},
    )


async def schedule(
    app: Referrals, partner_id: str, referral_id: str, start: datetime, note: str | None
) -> ReferralRecord:
    return await _transition(
        app,
        partner_id,
        referral_id,
        "schedule",
        note=note,
        updates={"first_visit_at": as_utc(start)},
    )


async def complete(
    app: Referrals,
    partner_id: str,
    referral_id: str,
    summary: str,
    sessions_completed: int | None,
    pdf: bytes | None,
) -> ReferralRecord:
    async def count(session: AsyncSession, row: db.Referral) -> None:
        await _progress(session, app, row, sessions_completed, finished=True)

    return await _transition(
        app,
        partner_id,
        referral_id,
        "complete",
        updates={
            "report_summary": summary,
            "report_pdf": pdf,
            "sessions_reported": sessions_completed,
            "completed_at": app.clock(),
        },
        after=count,
    )


async def report(
    app: Referrals,
    partner_id: str,
    referral_id: str,
    update_kind: BusinessStatus,
    note: str | None,
    sessions_completed: int | None = None,
) -> ReferralRecord:
    """A no-show or an interim note: a business status, no Task transition."""
    async with app.uow.write() as session:
        row = await _partner_referral(session, partner_id, referral_id)
        domain.check_business_update(row.task_status, update_kind)
        now = app.clock()
        row.business_status = update_kind.value
        if sessions_completed is not None:
            row.sessions_reported = max(row.sessions_reported or 0, sessions_completed)
        row.version += 1
        row.updated_at = now
        record_history(session, row, update_kind.value, actor=_actor(partner_id), at=now, note=note)
        if sessions_completed is not None:
            await _progress(session, app, row, sessions_completed, finished=False)
        return await record_of(session, row)


async def _progress(
    session: AsyncSession,
    app: Referrals,
    row: db.Referral,
    sessions_completed: int | None,
    *,
    finished: bool,
) -> None:
    """A partner's report moves its component of the plan."""
    plan = await lock_plan(session, row.plan_id)
    if plan is None:
        return
    component = next((c for c in plan.components if c.discipline == row.discipline), None)
    if component is None:
        return
    before = (component.completed_sessions, component.completed_at)
    if sessions_completed is not None:
        component.completed_sessions = max(component.completed_sessions, sessions_completed)
    if finished:
        if sessions_completed is None:
            component.completed_sessions = max(component.completed_sessions, component.sessions)
        component.completed_at = component.completed_at or app.clock()
    if (component.completed_sessions, component.completed_at) != before:
        await plan_changed(session, app, plan)
