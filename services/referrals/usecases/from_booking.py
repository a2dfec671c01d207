"""What booking's events change here: our copy of a client (which sends the referrals that
waited for it) and the massage sessions that count toward a care plan.

Each handler runs inside the consumer's unit of work (``shared.broker``), together with
the inbox row that makes a redelivered event a no-op.
"""

from __future__ import annotations

from datetime import UTC

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals import db, domain
from services.referrals.domain import TaskStatus
from services.referrals.usecases.context import SYSTEM, Referrals
from services.referrals.usecases.lifecycle import issue, plan_changed
from shared import events
from shared.events import ClientEvent, CloudEvent, SessionEvent
from shared.timeutil import as_utc


async def apply_client_event(
    app: Referrals, session: AsyncSession, event: CloudEvent[ClientEvent]
) -> None:
    """Keep our copy of a client; send the referrals that were waiting for it."""
    details = event.data.client
    at = event.time if event.time.tzinfo is not None else event.time.replace(tzinfo=UTC)
    row = await session.get(db.Client, details.id)
    if row is not None and row.source_time >= at:
        return  # an older state arriving late
    if row is None:
        row = db.Client(id=details.id)
        session.add(row)
    row.first_name = details.first_name
    row.last_name = details.last_name
    row.date_of_birth = details.date_of_birth
    row.phone = details.phone
    row.email = details.email
    row.sms_consent = details.sms_consent
    row.source_time = at
    row.updated_at = app.clock()
    await session.flush()
    drafts = (
        await session.scalars(
            select(db.Referral)
            .where(
                db.Referral.client_id == details.id,
                db.Referral.task_status == TaskStatus.DRAFT.value,
            )
            .with_for_update()
        )
    ).all()
    for draft in drafts:
        await issue(session, app, draft, SYSTEM)


async def apply_session_event(
    app: Referrals, session: AsyncSession, event: CloudEvent[SessionEvent]
) -> None:
    """A completed session (or a no-show) counts toward the client's massage component."""
    if event.type not in (events.SESSION_COMPLETED, events.SESSION_NO_SHOW):
        return
    data = event.data
    if await session.get(db.CountedSession, data.session_id) is not None:
        return
    plan = (
        await session.scalars(
            select(db.Plan)
            .join(db.PlanComponent, db.PlanComponent.plan_id == db.Plan.id)
            .where(
                db.Plan.client_id == data.client.id,
                db.Plan.status == "active",
                db.Plan.created_at <= as_utc(data.end),
                db.PlanComponent.discipline == domain.MASSAGE,
                db.PlanComponent.completed_at.is_(None),
            )
            .order_by(db.Plan.created_at, db.Plan.id)
            .limit(1)
            .with_for_update()
        )
    ).first()
    if plan is None:
        return  # no plan wants this session
    component = next(c for c in plan.components if c.discipline == domain.MASSAGE)
    now = app.clock()
    completed = event.type == events.SESSION_COMPLETED
    session.add(
        db.CountedSession(
            session_id=data.session_id,
            plan_id=plan.id,
            outcome="completed" if completed else "no_show",
            counted_at=now,
        )
    )
    if completed:
        component.completed_sessions += 1
        if component.completed_sessions >= component.sessions:
            component.completed_at = now
    else:
        component.no_shows += 1
    await plan_changed(session, app, plan)
