"""Sending a claimed message once, in whichever reminders replica takes it from the
``reminders.due`` work queue: the provider is asked (or, when an earlier attempt may have
gone, looked at first), and the answer is written to the ledger.

A claimed row and its ``reminders.due`` message are written in one transaction
(``ledger.claim``), so a claim is never lost: a replica that dies mid-send stops marking
its message in progress, and the queue hands it to another after one ack wait, flagged as
a redelivery, which looks at the provider before sending. Rows a dead process of an older
version left "submitting" (no queue message) are settled on becoming active."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.reminders import db, domain
from services.reminders.consent import set_consent
from services.reminders.context import Reminders
from services.reminders.ledger import Outgoing, outgoing_of
from services.reminders.sender import UNSUBSCRIBED, Accepted, SendFailed
from services.reminders.status import STATUS_RANK, apply_early_statuses, sms_event
from shared import events
from shared.outbox import enqueue

log = structlog.get_logger(__name__)

#: A "submitting" row this old has no sender left: its queue message is gone too.
ORPHANED_AFTER = timedelta(minutes=10)


class Unresolved(Exception):
    """Whether the provider has the message could not be told: try again later."""


async def send_due(app: Reminders, event: events.CloudEvent[events.SmsDue], delivered: int) -> None:
    """The ``reminders.due`` task: send the claimed row once, unless it is settled."""
    async with app.uow.read() as session:
        row = await session.get(db.Message, event.data.message_id)
    if row is None or row.status != "submitting" or row.key in app.in_flight:
        return  # settled, or this process is still sending it (a slow first delivery)
    await transmit(app, outgoing_of(row, reconcile=event.data.reconcile or delivered > 1))


async def transmit(app: Reminders, out: Outgoing) -> None:
    """Send a claimed message once: look first when an earlier attempt may have gone.
    Raises :class:`Unresolved` when that could not be told (the queue retries)."""
    app.in_flight.add(out.key)
    try:
        accepted: Accepted | None = None
        if out.reconcile:
            try:
                accepted = await app.sender.find(out.phone, out.body, out.created_at)
            except Exception as exc:
                log.warning("sms.unresolved", key=out.key, error=type(exc).__name__)
                raise Unresolved(out.key) from exc
            if accepted is None and out.deadline is not None and app.now() > out.deadline:
                await _finish_failed(
                    app, out, SendFailed(None, "too_late", permanent=True), status="skipped"
                )
                return
            if accepted is not None:
                log.info("sms.reconciled", key=out.key, sid=accepted.sid)
        if accepted is None:
            accepted = await app.sender.send(out.phone, out.body, out.created_at)
        await _finish_accepted(app, out, accepted)
    except SendFailed as failure:
        await _finish_failed(app, out, failure)
    finally:
        app.in_flight.discard(out.key)


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


async def reconcile_orphans(app: Reminders) -> int:
    """On becoming active: settle the sends a dead process left "submitting" long ago
    (written before the work queue existed, or dead-lettered by it)."""
    async with app.uow.read() as session:
        rows = (
            await session.scalars(
                select(db.Message).where(
                    db.Message.status == "submitting",
                    db.Message.direction == "outbound",
                    db.Message.updated_at < app.now() - ORPHANED_AFTER,
                )
            )
        ).all()
    pending = [outgoing_of(row, reconcile=True) for row in rows if row.key not in app.in_flight]
    if not pending:
        return 0
    log.warning("sms.reconciling", count=len(pending))
    results = await asyncio.gather(*(transmit(app, out) for out in pending), return_exceptions=True)
    return sum(1 for r in results if not isinstance(r, BaseException))
