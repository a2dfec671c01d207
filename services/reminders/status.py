"""Delivery status: Twilio's status callbacks move a sent message forward (never back),
announcing delivered and failed; a callback that beats the send's own record waits."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.reminders import db, domain
from services.reminders.context import Reminders
from shared import events
from shared.outbox import enqueue

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


def sms_event(event_type: str, row: db.Message) -> events.CloudEvent[Any]:
    return events.make_event(
        event_type,
        domain.SOURCE,
        events.SmsEvent(
            message_id=row.id,
            session_id=row.session_id,
            rule=row.rule,
            provider_sid=row.provider_sid,
            error_code=row.error_code,
        ),
        subject=row.id,
    )


async def apply_status(
    session: AsyncSession, row: db.Message, status: str, error_code: int | None, now: datetime
) -> None:
    if STATUS_RANK.get(status, -1) <= STATUS_RANK.get(row.status, -1):
        return
    row.status = status
    row.updated_at = now
    if status == "delivered":
        row.delivered_at = now
        await enqueue(session, sms_event(events.SMS_DELIVERED, row))
    elif status in FAILED_STATUSES:
        row.error_code = error_code
        await enqueue(session, sms_event(events.SMS_FAILED, row))


async def apply_early_statuses(
    session: AsyncSession, message_id: str, sid: str, now: datetime
) -> None:
    """Once a send is recorded: the callbacks for it that came first."""
    early = (
        await session.scalars(
            select(db.EarlyStatus)
            .where(db.EarlyStatus.provider_sid == sid)
            .order_by(db.EarlyStatus.id)
        )
    ).all()
    if not early:
        return
    row = await session.get(db.Message, message_id, populate_existing=True)
    for status in early:
        if row is not None:
            await apply_status(session, row, status.status, status.error_code, now)
        await session.delete(status)


async def record_status(app: Reminders, sid: str, status: str, error_code: int | None) -> None:
    """A status callback: move the message forward (never back); keep it if it came early."""
    now = app.now()

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
        await apply_status(session, row, status, error_code, now)

    await app.batch.run(write)
