"""The steps the actors' use cases are made of: one transition of a referral with its
history row and event, a webhook delivery queued for the partner, a plan's progress
announced. Each runs inside the caller's transaction."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals import db, domain
from services.referrals.queries import held, plan_progress
from services.referrals.usecases.context import DEADLINES, DISPATCHER, SOURCE, Referrals
from shared import events
from shared.errors import NotFound
from shared.ids import new_id
from shared.outbox import OUTBOX, enqueue, outbox
from shared.uow import after_commit


def _event(event_type: str, data: Any, subject: str) -> events.CloudEvent[Any]:
    return events.make_event(event_type, SOURCE, data, subject=subject)


def referral_payload(
    row: db.Referral, partner: db.Partner, client: db.Client | None
) -> events.ReferralEvent:
    """The contract's fields, plus what a consumer needs to act without asking us."""
    extra: dict[str, Any] = {
        "task_status": row.task_status,
        "business_status": row.business_status,
        "urgency": row.urgency,
        "version": row.version,
    }
    if row.status_reason and row.status in ("declined", "cancelled", "expired", "failed"):
        extra["status_reason"] = row.status_reason
    if row.first_visit_at is not None:
        extra["first_visit_at"] = row.first_visit_at.isoformat()
    if row.expire_at is not None and row.task_status in domain.AWAITING_ANSWER:
        extra["respond_by"] = row.expire_at.isoformat()
    if client is not None:
        extra["client"] = {
            "id": client.id,
            "first_name": client.first_name,
            "phone": client.phone,
            "sms_consent": client.sms_consent,
        }
    return events.ReferralEvent(
        referral_id=row.id,
        plan_id=row.plan_id,
        client_id=row.client_id,
        partner=events.PartnerRef(id=partner.id, discipline=partner.discipline),
        status=row.status,
        **extra,
    )


#: ``session.info`` key of a batch's events, written together by :func:`write_events`.
_EVENT_BATCH = "referrals.event_batch"


def collect_events(session: AsyncSession) -> None:
    """From now on, this transaction's referral events wait for :func:`write_events`
    (one statement for a batch's events instead of one each)."""
    session.info[_EVENT_BATCH] = []


async def write_events(session: AsyncSession) -> None:
    batch: list[events.CloudEvent[Any]] = session.info.pop(_EVENT_BATCH, None) or []
    if batch:
        after_commit(session, OUTBOX)
        await session.execute(
            insert(outbox),
            [
                {
                    "event_id": e.id,
                    "subject": e.type,
                    "payload": e.model_dump_json(),
                    "created_at": e.time,
                }
                for e in batch
            ],
        )


async def announce(session: AsyncSession, row: db.Referral) -> None:
    """Queue ``referrals.referral.<status>`` for the referral as it is now."""
    partner = await held(session, db.Partner, row.partner_id)
    assert partner is not None
    client = await held(session, db.Client, row.client_id)
    event = _event(
        events.referral_subject(row.status), referral_payload(row, partner, client), row.id
    )
    batch = session.info.get(_EVENT_BATCH)
    if batch is not None:
        batch.append(event)
        return
    await enqueue(session, event)


async def _announce_plan(session: AsyncSession, plan: db.Plan, event_type: str) -> None:
    data = events.PlanEvent(
        plan_id=plan.id,
        client_id=plan.client_id,
        progress=plan_progress(plan),
        status=plan.status,
        version=plan.version,
    )
    await enqueue(session, _event(event_type, data, plan.id))


async def announce_new_plan(session: AsyncSession, plan: db.Plan) -> None:
    await _announce_plan(session, plan, events.PLAN_CREATED)


async def plan_changed(session: AsyncSession, app: Referrals, plan: db.Plan) -> None:
    """Announce new progress; complete the plan when every component is done."""
    now = app.clock()
    plan.version += 1
    plan.updated_at = now
    await _announce_plan(session, plan, events.PLAN_UPDATED)
    if plan.status == "active" and plan_progress(plan)["completed"]:
        plan.status = "completed"
        plan.completed_at = now
        plan.version += 1
        await _announce_plan(session, plan, events.PLAN_COMPLETED)


async def lock_plan(session: AsyncSession, plan_id: str) -> db.Plan | None:
    return (
        await session.scalars(select(db.Plan).where(db.Plan.id == plan_id).with_for_update())
    ).first()


async def find_referral_locked(session: AsyncSession, referral_id: str) -> db.Referral | None:
    return (
        await session.scalars(
            select(db.Referral).where(db.Referral.id == referral_id).with_for_update()
        )
    ).first()


async def lock_referral(session: AsyncSession, referral_id: str) -> db.Referral:
    row = await find_referral_locked(session, referral_id)
    if row is None:
        raise NotFound("referral", referral_id)
    return row


def record_history(
    session: AsyncSession,
    row: db.Referral,
    action: str,
    *,
    actor: str,
    at: Any,
    note: str | None = None,
) -> None:
    session.add(
        db.ReferralHistory(
            referral_id=row.id,
            at=at,
            action=action,
            task_status=row.task_status,
            business_status=row.business_status,
            note=note,
            actor=actor,
        )
    )


async def apply(
    session: AsyncSession,
    app: Referrals,
    row: db.Referral,
    action: str,
    *,
    actor: str,
    note: str | None = None,
    status_reason: str | None = None,
    updates: dict[str, Any] | None = None,
) -> None:
    """Make one transition of the state machine, record it and queue its event."""
    move = domain.transition(row.task_status, action)
    now = app.clock()
    for name, value in (updates or {}).items():
        setattr(row, name, value)
    row.task_status = move.target.value
    row.status = move.announces
    if action in domain.BUSINESS_STATUS_AFTER:
        after = domain.BUSINESS_STATUS_AFTER[action]
        row.business_status = after.value if after is not None else None
    if status_reason is not None:
        row.status_reason = status_reason
    row.version += 1
    row.updated_at = now
    record_history(session, row, action, actor=actor, at=now, note=note)
    await announce(session, row)


async def queue_delivery(
    session: AsyncSession, app: Referrals, row: db.Referral, kind: str
) -> None:
    """Queue a webhook to the partner, if it has one; partners without poll the API."""
    partner = await held(session, db.Partner, row.partner_id)
    if partner is None or partner.webhook_url is None:
        return
    now = app.clock()
    after_commit(session, DISPATCHER)
    session.add(
        db.Delivery(
            id=new_id(),
            referral_id=row.id,
            partner_id=partner.id,
            kind=kind,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            deadline_at=now + timedelta(hours=app.webhook_retry_hours),
            created_at=now,
        )
    )


async def supersede_deliveries(session: AsyncSession, referral_id: str) -> None:
    """The referral was withdrawn: stop sending it (and its reminders)."""
    await session.execute(
        update(db.Delivery)
        .where(
            db.Delivery.referral_id == referral_id,
            db.Delivery.status == "pending",
            db.Delivery.kind.in_(("requested", "reminder", "outcome")),
        )
        .values(status="superseded")
    )


async def issue(session: AsyncSession, app: Referrals, row: db.Referral, actor: str) -> None:
    """Send the referral: its deadlines start now, and its webhook (if any) is queued."""
    now = app.clock()
    remind_at, expire_at = domain.answer_deadlines(now, app.accept_hours, app.expire_after_hours)
    await apply(
        session,
        app,
        row,
        "issue",
        actor=actor,
        updates={
            "issued_at": now,
            "remind_at": remind_at,
            "expire_at": expire_at,
            "deadlines_scheduled": False,
        },
    )
    await queue_delivery(session, app, row, "requested")
    after_commit(session, DEADLINES)
