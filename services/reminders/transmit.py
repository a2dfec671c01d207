"""Sending a claimed message once: the provider is asked (or, when an earlier attempt may
have gone, looked at first), and the answer is written to the ledger. On becoming active,
the sends a dead process left half done are settled the same way."""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.reminders import db, domain
from services.reminders.consent import set_consent
from services.reminders.context import Reminders
from services.reminders.ledger import Outgoing, outgoing_of
from services.reminders.sender import UNSUBSCRIBED, Accepted, NotActive, SendFailed
from services.reminders.status import STATUS_RANK, apply_early_statuses, sms_event
from shared import events
from shared.outbox import enqueue

log = structlog.get_logger(__name__)


async def transmit(app: Reminders, out: Outgoing) -> None:
    """Send a claimed message once: look first when an earlier attempt may have gone."""
    app.in_flight.add(out.key)
    try:
        accepted: Accepted | None = None
        if out.reconcile:
            accepted = await app.sender.find(out.phone, out.body, out.created_at)
            if accepted is None and out.deadline is not None and app.now() > out.deadline:
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
                if not await lease_back(app):
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


async def lease_back(app: Reminders) -> bool:
    """Whether this instance is (again) the active one within one lease."""
    step = app.settings.scheduler_lease_seconds / 20
    for _ in range(20):
        if app.is_active():
            return True
        if app.scheduler.scheduler is None:
            return False  # stood down
        await asyncio.sleep(step)
    return app.is_active()


async def _finish_accepted(app: Reminders, out: Outgoing, accepted: Accepted) -> None:
    now = app.now()

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
                domain.SOURCE,
                events.SmsEvent(
                    message_id=out.message_id,
                    session_id=out.session_id,
                    rule=out.rule,
                    provider_sid=accepted.sid,
                ),
                subject=out.message_id,
            ),
        )
        await apply_early_statuses(session, out.message_id, accepted.sid, now)

    await app.batch.run(write)
    log.info("sms.sent", key=out.key, sid=accepted.sid, attempts=accepted.attempts)


async def _finish_failed(
    app: Reminders, out: Outgoing, failure: SendFailed, status: str = "failed"
) -> None:
    now = app.now()
    async with app.uow.write() as session:
        row = await session.get(db.Message, out.message_id)
        if row is None:
            return
        row.status = status
        row.error_code = failure.code
        row.reason = failure.detail
        row.attempts = (row.attempts or 0) + failure.attempts
        row.updated_at = now
        if status == "failed":
            await enqueue(session, sms_event(events.SMS_FAILED, row))
        if failure.code == UNSUBSCRIBED:
            await set_consent(session, row.phone, False, "provider_21610", now)
    log.warning("sms.failed", key=out.key, code=failure.code, permanent=failure.permanent)


async def reconcile_in_flight(app: Reminders) -> int:
    """On becoming active: settle every send a dead process left half done.

    The scheduler already runs, so a job may claim one of these keys meanwhile: the keys
    are marked in flight before the first await, and such a job leaves them alone.
    """
    async with app.uow.read() as session:
        rows = (
            await session.scalars(
                select(db.Message).where(
                    db.Message.status == "submitting", db.Message.direction == "outbound"
                )
            )
        ).all()
    pending = [outgoing_of(row, reconcile=True) for row in rows if row.key not in app.in_flight]
    if not pending:
        return 0
    keys = {out.key for out in pending}
    app.in_flight.update(keys)
    log.warning("sms.reconciling", count=len(pending))
    try:
        await asyncio.gather(*(transmit(app, out) for out in pending))
    finally:
        app.in_flight.difference_update(keys)
    return len(pending)
