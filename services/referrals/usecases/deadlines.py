"""What the system does when a partner does not answer in time (run by the deadline jobs
of ``services.referrals.deadlines``): remind the partner, then withdraw the referral."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select, update

from services.referrals import db, domain
from services.referrals.domain import BusinessStatus
from services.referrals.usecases.context import SYSTEM, Referrals
from services.referrals.usecases.lifecycle import (
    apply,
    find_referral_locked,
    queue_delivery,
    record_history,
    supersede_deliveries,
)

log = structlog.get_logger(__name__)

#: A job may fire a little early (clock differences between replicas); not earlier.
_DEADLINE_SLACK = timedelta(seconds=5)


async def remind_partner(app: Referrals, referral_id: str) -> bool:
    """Not accepted in time: remind the partner (webhook, or recorded for the API)."""
    async with app.uow.write() as session:
        row = await find_referral_locked(session, referral_id)
        now = app.clock()
        if (
            row is None
            or row.task_status not in domain.AWAITING_ANSWER
            or row.reminded_at is not None
            or row.remind_at is None
            or now < row.remind_at - _DEADLINE_SLACK
        ):
            return False
        row.reminded_at = now
        row.business_status = BusinessStatus.REMINDER_SENT.value
        row.version += 1
        row.updated_at = now
        note = f"not accepted within {app.accept_hours:g} h"
        record_history(session, row, "remind", actor=SYSTEM, at=now, note=note)
        await queue_delivery(session, app, row, "reminder")
        log.info("referral.reminded", referral_id=row.id)
        return True


async def expire_referral(app: Referrals, referral_id: str) -> bool:
    """Still not accepted after the reminder: withdraw it, tell the front desk and partner."""
    async with app.uow.write() as session:
        row = await find_referral_locked(session, referral_id)
        now = app.clock()
        if (
            row is None
            or row.task_status not in domain.AWAITING_ANSWER
            or row.expire_at is None
            or now < row.expire_at - _DEADLINE_SLACK
        ):
            return False
        hours = app.accept_hours + app.expire_after_hours
        reason = f"not accepted within {hours:g} h"
        await apply(session, app, row, "expire", actor=SYSTEM, note=reason, status_reason=reason)
        await supersede_deliveries(session, row.id)
        await queue_delivery(session, app, row, "expired")
        log.info("referral.expired", referral_id=row.id)
        return True


@dataclass(frozen=True)
class DeadlinePlan:
    referral_id: str
    remind_at: datetime
    expire_at: datetime


async def unplanned_deadlines(app: Referrals, limit: int = 500) -> list[DeadlinePlan]:
    """Referrals waiting for an answer whose deadline jobs the scheduler has not made yet."""
    async with app.uow.read() as session:
        rows = (
            await session.execute(
                select(db.Referral.id, db.Referral.remind_at, db.Referral.expire_at)
                .where(
                    db.Referral.deadlines_scheduled.is_(False),
                    db.Referral.task_status.in_([s.value for s in domain.AWAITING_ANSWER]),
                    db.Referral.remind_at.is_not(None),
                    db.Referral.expire_at.is_not(None),
                )
                .limit(limit)
            )
        ).all()
        return [DeadlinePlan(r.id, r.remind_at, r.expire_at) for r in rows]


async def mark_deadlines_planned(app: Referrals, referral_ids: Sequence[str]) -> None:
    """The jobs of these referrals are in the store (no wake-up: nobody waits for this)."""
    async with app.uow.write() as session:
        await session.execute(
            update(db.Referral)
            .where(db.Referral.id.in_(list(referral_ids)))
            .values(deadlines_scheduled=True)
        )
