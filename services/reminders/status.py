"""Delivery status: Twilio's status callbacks move a sent message forward (never back),
announcing delivered and failed; a callback that beats the send's own record waits.

Each text brings three callbacks (queued, sent, delivered), so a burst brings three times
as many as it sends: they are appended and applied in batches (``batch.Coalesced``), one
``SELECT ... IN`` and one executemany per batch, folded in arrival order per message."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.reminders import db, domain
from services.reminders.batch import enqueue_all
from services.reminders.context import Reminders
from shared import events

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

#: The tables themselves: the batch writes are Core (no identity map, cached statements).
MESSAGES = cast(Table, db.Message.__table__)
EARLY = cast(Table, db.EarlyStatus.__table__)


class _MessageLike(Protocol):
    id: str
    session_id: str | None
    rule: str | None
    provider_sid: str | None
    error_code: int | None


def sms_event(event_type: str, row: _MessageLike) -> events.CloudEvent[Any]:
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


@dataclass
class Tracked:
    """A message's delivery state as read for a batch of callbacks (Core, not the ORM)."""

    id: str
    status: str
    session_id: str | None
    rule: str | None
    provider_sid: str | None
    error_code: int | None
    delivered_at: datetime | None
    updated_at: datetime | None = None
    changed: bool = False


@dataclass(frozen=True)
class Callback:
    sid: str
    status: str
    error_code: int | None
    at: datetime


_TRACKED = (
    MESSAGES.c.id,
    MESSAGES.c.status,
    MESSAGES.c.session_id,
    MESSAGES.c.rule,
    MESSAGES.c.provider_sid,
    MESSAGES.c.error_code,
    MESSAGES.c.delivered_at,
)


def advance(
    row: Tracked, status: str, error_code: int | None, now: datetime
) -> events.CloudEvent[Any] | None:
    """Move ``row`` to ``status`` if that is forward; the event it announces, if any."""
    if STATUS_RANK.get(status, -1) <= STATUS_RANK.get(row.status, -1):
        return None
    row.status = status
    row.updated_at = now
    row.changed = True
    if status == "delivered":
        row.delivered_at = now
        return sms_event(events.SMS_DELIVERED, row)
    if status in FAILED_STATUSES:
        row.error_code = error_code
        return sms_event(events.SMS_FAILED, row)
    return None


async def tracked(session: AsyncSession, sids: list[str]) -> list[Tracked]:
    """The rows of these provider sids, in one ``SELECT ... IN``."""
    if not sids:
        return []
    rows = await session.execute(select(*_TRACKED).where(MESSAGES.c.provider_sid.in_(set(sids))))
    return [Tracked(*row) for row in rows]


async def save(session: AsyncSession, rows: list[Tracked]) -> None:
    """Write the rows :func:`advance` moved: one executemany."""
    changed = [r for r in rows if r.changed]
    if not changed:
        return
    await session.execute(
        update(MESSAGES)
        .where(MESSAGES.c.id == bindparam("b_id"))
        .values(
            status=bindparam("b_status"),
            updated_at=bindparam("b_updated"),
            delivered_at=bindparam("b_delivered"),
            error_code=bindparam("b_error"),
        ),
        [
            {
                "b_id": r.id,
                "b_status": r.status,
                "b_updated": r.updated_at,
                "b_delivered": r.delivered_at,
                "b_error": r.error_code,
            }
            for r in changed
        ],
    )


async def apply_statuses(session: AsyncSession, callbacks: list[Callback]) -> list[None]:
    """A batch of callbacks, in arrival order: each moves its message forward, or waits
    in ``early_statuses`` when its send is not recorded yet."""
    rows = {r.provider_sid: r for r in await tracked(session, [c.sid for c in callbacks])}
    announced: list[events.CloudEvent[Any]] = []
    early: list[dict[str, Any]] = []
    for callback in callbacks:
        row = rows.get(callback.sid)
        if row is None:
            early.append(
                {
                    "provider_sid": callback.sid,
                    "status": callback.status,
                    "error_code": callback.error_code,
                    "received_at": callback.at,
                }
            )
            continue
        event = advance(row, callback.status, callback.error_code, callback.at)
        if event is not None:
            announced.append(event)
    await save(session, list(rows.values()))
    if early:
        await session.execute(insert(EARLY), early)
    await enqueue_all(session, announced)
    return [None] * len(callbacks)


async def apply_early(session: AsyncSession, sids: list[str], now: datetime) -> None:
    """Once sends are recorded: the callbacks for them that came first (one look for all)."""
    if not sids:
        return
    early = (
        await session.execute(
            select(EARLY.c.id, EARLY.c.provider_sid, EARLY.c.status, EARLY.c.error_code)
            .where(EARLY.c.provider_sid.in_(set(sids)))
            .order_by(EARLY.c.id)
        )
    ).all()
    if not early:
        return
    rows = {r.provider_sid: r for r in await tracked(session, [e.provider_sid for e in early])}
    announced: list[events.CloudEvent[Any]] = []
    for status in early:
        row = rows.get(status.provider_sid)
        if row is not None:
            event = advance(row, status.status, status.error_code, now)
            if event is not None:
                announced.append(event)
    await save(session, list(rows.values()))
    await session.execute(delete(EARLY).where(EARLY.c.id.in_([e.id for e in early])))
    await enqueue_all(session, announced)


async def record_status(app: Reminders, sid: str, status: str, error_code: int | None) -> None:
    """A status callback: move the message forward (never back); keep it if it came early.
    Applied with the callbacks that arrive meanwhile, in one write."""
    writer = app.batch.coalesced("statuses", apply_statuses)
    await writer.run(Callback(sid, status, error_code, app.now()))
