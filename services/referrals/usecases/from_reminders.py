"""What reminders' events change here: a check-in answer (``reminders.outcome.recorded``)
becomes a pain score on the client's plan, and the partners treating that plan hear of it.

Runs inside the consumer's unit of work (``shared.broker``), with the inbox row that makes
a redelivered event a no-op; the unique ``session_id`` of ``outcomes`` does the same for the
same answer published again under another event id.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals import db, domain
from services.referrals.usecases.context import Referrals
from services.referrals.usecases.lifecycle import queue_delivery
from shared.events import CloudEvent, OutcomeRecorded
from shared.ids import new_id
from shared.timeutil import as_utc


async def plan_for_outcome(session: AsyncSession, data: OutcomeRecorded) -> db.Plan | None:
    """The plan a score counts toward.

    The plan the checked-in session was counted toward, whatever its status now (the last
    session of a plan completes it, and its check-in comes a day later: that score matters
    most); else the client's newest active plan made before they answered; else none (a
    plan made later has a baseline taken after this score).
    """
    counted = await session.get(db.CountedSession, data.session_id)
    if counted is not None:
        plan = await session.get(db.Plan, counted.plan_id)
        if plan is not None and plan.client_id == data.client_id:
            return plan
    return (
        await session.scalars(
            select(db.Plan)
            .where(
                db.Plan.client_id == data.client_id,
                db.Plan.status == "active",
                db.Plan.created_at <= as_utc(data.answered_at),
            )
            .order_by(db.Plan.created_at.desc(), db.Plan.id.desc())
            .limit(1)
        )
    ).first()


async def apply_outcome(
    app: Referrals, session: AsyncSession, event: CloudEvent[OutcomeRecorded]
) -> None:
    """Record the score once per session; queue a webhook to each partner treating the plan
    (its Bundle carries the plan's Observations)."""
    data = event.data
    known = await session.scalar(
        select(db.Outcome.id).where(db.Outcome.session_id == data.session_id)
    )
    if known is not None:
        return  # the same answer again: recorded once
    plan = await plan_for_outcome(session, data)
    session.add(
        db.Outcome(
            id=new_id(),
            session_id=data.session_id,
            client_id=data.client_id,
            plan_id=plan.id if plan is not None else None,
            score=data.score,
            answered_at=as_utc(data.answered_at),
            recorded_at=app.clock(),
        )
    )
    # A concurrent replica inserting the same session fails here on the unique constraint;
    # the consumer retries, and the retry finds the row above.
    await session.flush()
    if plan is None:
        return
    treating = (
        await session.scalars(
            select(db.Referral)
            .where(
                db.Referral.plan_id == plan.id,
                db.Referral.task_status.in_(sorted(s.value for s in domain.TREATING)),
            )
            .order_by(db.Referral.created_at, db.Referral.id)
        )
    ).all()
    for referral in treating:
        await queue_delivery(session, app, referral, "outcome")
