"""What a firing job does: re-read, decide, claim the ledger row, send once; the results
and status callbacks that follow; and settling sends a dead process left half done."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.reminders import db, domain, texts
from services.reminders.planning import (
    job_for,
    referral_job,
    referral_plan,
    reschedule,
    state_of,
)
from services.reminders.scheduler import session_job_id
from services.reminders.sender import UNSUBSCRIBED, Accepted, NotActive, SendFailed
from services.reminders.usecases import (
    SOURCE,
    Reminders,
    client_location,
    consent_of,
    current_rules,
    enqueue,
    load_rules,
    new_id,
    set_consent,
)
from shared import events

log = structlog.get_logger(__name__)


#: Provider statuses in the order a message goes through them; a callback never goes back.
STATUS_RANK = {
    "submitting": 0,
    "accepted": 1,
    "scheduled": 1,
    "queued": 2,
    "sending": 3,
    "sent": 4,
    "delivered": 5,
    "undelivered": 5,
    "failed": 5,
    "canceled": 5,
    "read": 6,
}


FAILED_STATUSES = frozenset({"failed", "undelivered"})


@dataclass
class Outgoing:
    """A ledger row claimed for sending; ``reconcile`` when an earlier attempt may have gone."""

    message_id: str
    key: str
    phone: str
    body: str
    session_id: str | None
    rule: str
    created_at: datetime
    deadline: datetime | None
    reconcile: bool = False


def text_for_session(app: Reminders, kind: str, row: db.Session, client: db.Client) -> str:
    zone = ZoneInfo(row.location_timezone)
    ctx = texts.TextContext(
        first_name=client.first_name,
        when=texts.local_when(row.start_at, zone),
        location=row.location_name,
        phone=texts.display_phone(row.location_phone, app.settings.default_phone_region),
        link=app.links.aftercare_url(row.id) if kind == "followup" else "",
    )
    return texts.render(kind, ctx)


async def _record_skip(
    session: AsyncSession,
    app: Reminders,
    planned: domain.Planned,
    reason: str,
    *,
    phone: str,
    session_id: str | None,
    referral_id: str | None = None,
    client_id: str | None = None,
    location_id: str | None = None,
) -> None:
    now = app.clock()
    existing = (
        await session.scalars(select(db.Message).where(db.Message.key == planned.key))
    ).first()
    if existing is not None:
        return
    session.add(
        db.Message(
            id=new_id(),
            key=planned.key,
            direction="outbound",
            session_id=session_id,
            referral_id=referral_id,
            client_id=client_id,
            location_id=location_id,
            rule=planned.rule,
            kind=planned.kind,
            phone=phone,
            body="",
            status="skipped",
            reason=reason,
            due_at=planned.due,
            deadline_at=planned.deadline,
            created_at=now,
            updated_at=now,
        )
    )
    log.info("message.dropped", key=planned.key, rule=planned.rule, reason=reason)


async def _existing(session: AsyncSession, key: str) -> db.Message | None:
    return (await session.scalars(select(db.Message).where(db.Message.key == key))).first()


async def _claim(
    app: Reminders,
    planned: domain.Planned,
    body: str,
    existing: db.Message | None,
    *,
    phone: str,
    session_id: str | None,
    referral_id: str | None = None,
    client_id: str | None = None,
    location_id: str | None = None,
) -> Outgoing | None:
    """Write the ledger row before the provider is called; None if it is not ours to send.

    ``existing`` is the row for the key as read just before, outside the write lock; the
    write itself is one short statement guarded by the key's uniqueness (or the row's
    status), so two claims of one key cannot both win.
    """
    now = app.clock()
    if existing is not None:
        if existing.status == "submitting" and planned.key not in app.in_flight:
            return _outgoing(existing, reconcile=True)
        if existing.status != "skipped":
            return None  # sent (or being sent, or failed for good): at most once
        async with app.write() as session:
            result = await session.execute(
                update(db.Message)
                .where(db.Message.id == existing.id, db.Message.status == "skipped")
                .values(status="submitting", reason=None, body=body, phone=phone, updated_at=now)
            )
            if not getattr(result, "rowcount", 0):
                return None
        existing.status, existing.body, existing.phone = "submitting", body, phone
        return _outgoing(existing)
    row = db.Message(
        id=new_id(),
        key=planned.key,
        direction="outbound",
        session_id=session_id,
        referral_id=referral_id,
        client_id=client_id,
        location_id=location_id,
        rule=planned.rule,
        kind=planned.kind,
        phone=phone,
        body=body,
        status="submitting",
        attempts=0,
        due_at=planned.due,
        deadline_at=planned.deadline,
        created_at=now,
        updated_at=now,
    )

    async def write(session: AsyncSession) -> None:
        session.add(row)

    try:
        await app.batch.run(write)
    except IntegrityError:
        log.info("job.claimed_elsewhere", key=planned.key)
        return None
    return _outgoing(row)


async def _skip(app: Reminders, planned: domain.Planned, reason: str, **where: Any) -> None:
    async with app.write() as session:
        await _record_skip(session, app, planned, reason, **where)


def _outgoing(row: db.Message, reconcile: bool = False) -> Outgoing:
    return Outgoing(
        message_id=row.id,
        key=row.key or "",
        phone=row.phone,
        body=row.body,
        session_id=row.session_id,
        rule=row.rule or "",
        created_at=row.created_at,
        deadline=row.deadline_at,
        reconcile=reconcile,
    )


async def send_session_message(app: Reminders, session_id: str, rule_name: str) -> None:
    """A session job fired: re-read everything, then send, wait or drop."""
    if not app.is_active() and not await _lease_back(app):
        # The lease is gone: whoever holds it next re-adds this job (planning.repair_jobs).
        log.warning("job.not_active", job=session_job_id(session_id, rule_name))
        return
    now = app.clock()
    async with app.read() as session:
        row = await session.get(db.Session, session_id)
        if row is None:
            log.warning("job.unknown_session", session=session_id)
            return
        rules = (await current_rules(app, session)).for_location(row.location_id)
        rule = rules.rule(rule_name)
        if rule is None or not rule.enabled:
            log.info("job.rule_gone", session=session_id, rule=rule_name)
            return
        state = state_of(row)
        planned = domain.plan_one(state, rule, rules.quiet_hours)
        client = await session.get(db.Client, row.client_id)
        consent = await consent_of(session, client)
        decision = domain.decide(planned, consent, now, state.zone, rules.quiet_hours)
        existing = await _existing(session, planned.key) if planned is not None else None
        body = (
            text_for_session(app, decision.planned.kind, row, client)
            if isinstance(decision, domain.Send) and client is not None
            else ""
        )
        common: dict[str, Any] = {
            "phone": client.phone if client else "",
            "session_id": session_id,
            "client_id": row.client_id,
            "location_id": row.location_id,
        }
    if isinstance(decision, domain.Defer) and planned is not None:
        log.info("message.deferred", session=session_id, rule=rule_name, until=decision.until)
        await reschedule(app, job_for(session_id, domain.replanned(planned, decision.until)))
    elif isinstance(decision, domain.Skip):
        if decision.record and planned is not None and existing is None:
            await _skip(app, planned, decision.reason, **common)
        else:
            log.info("job.nothing_to_send", session=session_id, rule=rule_name)
    elif isinstance(decision, domain.Send) and body:
        outgoing = await _claim(app, decision.planned, body, existing, **common)
        if outgoing is not None:
            await transmit(app, outgoing)


async def send_referral_update(app: Reminders, notice_id: str) -> None:
    """A referral job fired: a neutral text with a signed link, nothing named."""
    if not app.is_active() and not await _lease_back(app):
        return
    now = app.clock()
    async with app.read() as session:
        notice = await session.get(db.ReferralNotice, notice_id)
        if notice is None:
            return
        rules = await current_rules(app, session)
        planned = await referral_plan(session, app, rules, notice)
        job = await referral_job(session, app, rules, notice)
        location_id, name, phone, zone = await client_location(session, notice.client_id)
        quiet = rules.for_location(location_id).quiet_hours
        client = await session.get(db.Client, notice.client_id)
        consent = await consent_of(session, client)
        decision = domain.decide(planned, consent, now, zone or app.default_zone, quiet)
        existing = await _existing(session, planned.key)
        common: dict[str, Any] = {
            "phone": client.phone if client else "",
            "session_id": None,
            "referral_id": notice.referral_id,
            "client_id": notice.client_id,
            "location_id": location_id,
        }
        body = ""
        if isinstance(decision, domain.Send) and client is not None:
            ctx = texts.TextContext(
                first_name=client.first_name,
                location=name or app.settings.clinic_name,
                phone=texts.display_phone(
                    phone or app.settings.clinic_phone, app.settings.default_phone_region
                ),
                link=app.links.referral_url(notice.referral_id),
            )
            body = texts.render("referral", ctx)
    if isinstance(decision, domain.Defer):
        job.run_at = decision.until
        await reschedule(app, job)
    elif isinstance(decision, domain.Skip) and decision.record and existing is None:
        await _skip(app, planned, decision.reason, **common)
    elif body:
        outgoing = await _claim(app, planned, body, existing, **common)
        if outgoing is not None:
            await transmit(app, outgoing)


async def on_job_missed(app: Reminders, job_id: str, scheduled: datetime) -> None:
    """A job ran past its grace (the service was down too long): dropped, and logged."""
    head, rule = job_id.rsplit(":", 1)
    log.warning("job.missed", job=job_id, scheduled=scheduled.isoformat())
    async with app.write() as session:
        if rule.startswith("referral_"):
            notice = await session.get(
                db.ReferralNotice, f"{head}:{rule.removeprefix('referral_')}"
            )
            if notice is None:
                return
            rules = await load_rules(session, app.settings)
            planned = await referral_plan(session, app, rules, notice)
            client = await session.get(db.Client, notice.client_id)
            await _record_skip(
                session,
                app,
                planned,
                "missed",
                phone=client.phone if client else "",
                session_id=None,
                referral_id=notice.referral_id,
                client_id=notice.client_id,
            )
            return
        row = await session.get(db.Session, head)
        if row is None:
            return
        ruleset = (await load_rules(session, app.settings)).for_location(row.location_id)
        found = ruleset.rule(rule)
        planned_for_session = (
            domain.plan_one(state_of(row), found, ruleset.quiet_hours) if found else None
        )
        if planned_for_session is None:
            return
        client = await session.get(db.Client, row.client_id)
        await _record_skip(
            session,
            app,
            planned_for_session,
            "missed",
            phone=client.phone if client else "",
            session_id=row.id,
            client_id=row.client_id,
            location_id=row.location_id,
        )


def _sms_event(event_type: str, row: db.Message) -> events.CloudEvent[Any]:
    return events.make_event(
        event_type,
        SOURCE,
        events.SmsEvent(
            message_id=row.id,
            session_id=row.session_id,
            rule=row.rule,
            provider_sid=row.provider_sid,
            error_code=row.error_code,
        ),
        subject=row.id,
    )


async def transmit(app: Reminders, out: Outgoing) -> None:
    """Send a claimed message once: look first when an earlier attempt may have gone."""
    app.in_flight.add(out.key)
    try:
        accepted: Accepted | None = None
        if out.reconcile:
            accepted = await app.sender.find(out.phone, out.body, out.created_at)
            if accepted is None and out.deadline is not None and app.clock() > out.deadline:
                await _finish_failed(
                    app, out, SendFailed(None, "too_late", permanent=True), status="skipped"
                )
                return
            if accepted is not None:
                log.info("sms.reconciled", key=out.key, sid=accepted.sid)
        while accepted is None:
            try:
                accepted = await app.sender.send(out.phone, out.body, out.created_at, app.is_active)
            except NotActive:
                # A renewal is late (a busy moment) or the lease is gone: wait for the
                # keeper to tell. If it is gone, the row stays "submitting" and whoever
                # holds the lease next reconciles it.
                if not await _lease_back(app):
                    raise
        await _finish_accepted(app, out, accepted)
    except NotActive:
        log.warning("sms.not_active", key=out.key)
    except SendFailed as failure:
        await _finish_failed(app, out, failure)
    except Exception as exc:  # the look-up failed: leave it submitting for the next try
        log.warning("sms.unresolved", key=out.key, error=type(exc).__name__)
    finally:
        app.in_flight.discard(out.key)


async def _lease_back(app: Reminders) -> bool:
    """Whether this instance is (again) the active one within one lease."""
    step = app.settings.scheduler_lease_seconds / 20
    for _ in range(20):
        if app.is_active():
            return True
        if app.scheduler is None:
            return False  # stood down
        await asyncio.sleep(step)
    return app.is_active()


async def _finish_accepted(app: Reminders, out: Outgoing, accepted: Accepted) -> None:
    now = app.clock()

    async def write(session: AsyncSession) -> None:
        await session.execute(
            update(db.Message)
            .where(db.Message.id == out.message_id)
            .values(
                provider_sid=accepted.sid,
                status=accepted.status if accepted.status in STATUS_RANK else "queued",
                attempts=db.Message.attempts + accepted.attempts,
                submitted_at=now,
                updated_at=now,
            )
        )
        await enqueue(
            session,
            events.make_event(
                events.SMS_SENT,
                SOURCE,
                events.SmsEvent(
                    message_id=out.message_id,
                    session_id=out.session_id,
                    rule=out.rule,
                    provider_sid=accepted.sid,
                ),
                subject=out.message_id,
            ),
        )
        early = (
            await session.scalars(
                select(db.EarlyStatus)
                .where(db.EarlyStatus.provider_sid == accepted.sid)
                .order_by(db.EarlyStatus.id)
            )
        ).all()
        if early:
            row = await session.get(db.Message, out.message_id, populate_existing=True)
            for status in early:
                if row is not None:
                    await _apply_status(session, row, status.status, status.error_code, now)
                await session.delete(status)

    await app.batch.run(write)
    log.info("sms.sent", key=out.key, sid=accepted.sid, attempts=accepted.attempts)


async def _finish_failed(
    app: Reminders, out: Outgoing, failure: SendFailed, status: str = "failed"
) -> None:
    now = app.clock()
    async with app.write() as session:
        row = await session.get(db.Message, out.message_id)
        if row is None:
            return
        row.status = status
        row.error_code = failure.code
        row.reason = failure.detail
        row.attempts = (row.attempts or 0) + failure.attempts
        row.updated_at = now
        if status == "failed":
            await enqueue(session, _sms_event(events.SMS_FAILED, row))
        if failure.code == UNSUBSCRIBED:
            await set_consent(session, row.phone, False, "provider_21610", now)
    log.warning("sms.failed", key=out.key, code=failure.code, permanent=failure.permanent)


async def _apply_status(
    session: AsyncSession, row: db.Message, status: str, error_code: int | None, now: datetime
) -> None:
    if STATUS_RANK.get(status, -1) <= STATUS_RANK.get(row.status, -1):
        return
    row.status = status
    row.updated_at = now
    if status == "delivered":
        row.delivered_at = now
        await enqueue(session, _sms_event(events.SMS_DELIVERED, row))
    elif status in FAILED_STATUSES:
        row.error_code = error_code
        await enqueue(session, _sms_event(events.SMS_FAILED, row))


async def record_status(app: Reminders, sid: str, status: str, error_code: int | None) -> None:
    """A status callback: move the message forward (never back); keep it if it came early."""
    now = app.clock()

    async def write(session: AsyncSession) -> None:
        row = (
            await session.scalars(
                select(db.Message)
                .where(db.Message.provider_sid == sid)
                .execution_options(populate_existing=True)
            )
        ).first()
        if row is None:
            session.add(
                db.EarlyStatus(
                    provider_sid=sid, status=status, error_code=error_code, received_at=now
                )
            )
            return
        await _apply_status(session, row, status, error_code, now)

    await app.batch.run(write)


async def reconcile_in_flight(app: Reminders) -> int:
    """On becoming active: settle every send a dead process left half done."""
    async with app.read() as session:
        rows = (
            await session.scalars(
                select(db.Message).where(
                    db.Message.status == "submitting", db.Message.direction == "outbound"
                )
            )
        ).all()
    pending = [_outgoing(row, reconcile=True) for row in rows if row.key not in app.in_flight]
    if pending:
        log.warning("sms.reconciling", count=len(pending))
        await asyncio.gather(*(transmit(app, out) for out in pending))
    return len(pending)
