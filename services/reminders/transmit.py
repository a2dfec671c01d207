"""Sending a claimed message once, in whichever reminders replica takes it from the
``reminders.due`` work queue: the provider is asked (or, when an earlier attempt may have
gone, looked at first), and the answer is written to the ledger.

A claimed row and its ``reminders.due`` message are written in one transaction
(``ledger.claim``), so a claim is never lost: a replica that dies mid-send stops marking
its message in progress, and the queue hands it to another after one ack wait, flagged as
a redelivery, which looks at the provider before sending. Rows a dead process of an older
version left "submitting" (no queue message) are settled on becoming active.

Who sends is decided by the database, not by the queue: before asking the provider a
replica takes the row's send lease (a conditional UPDATE of ``sending_by`` and
``sending_until``) and renews it while it works. A copy the queue hands to a second replica
while the first is still sending (its in-progress marks could not reach NATS: a node's
loss) finds the lease held and comes back later (:class:`~shared.consumers.Deferred`); a dead
replica's lease lapses, and whoever takes it next looks at the provider first."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.reminders import db, domain
from services.reminders.batch import enqueue_all
from services.reminders.consent import set_consent
from services.reminders.context import Reminders
from services.reminders.ledger import Outgoing, outgoing_of
from services.reminders.sender import UNSUBSCRIBED, Accepted, SendFailed
from services.reminders.status import MESSAGES, STATUS_RANK, apply_early, sms_event
from shared import events
from shared.consumers import Deferred
from shared.outbox import enqueue

log = structlog.get_logger(__name__)

#: A "submitting" row this old has no sender left: its queue message is gone too.
ORPHANED_AFTER = timedelta(minutes=10)


class Unresolved(Exception):
    """Whether the provider has the message could not be told: try again later."""


async def send_due(app: Reminders, event: events.CloudEvent[events.SmsDue], delivered: int) -> None:
    """The ``reminders.due`` task: send the claimed row once, unless it is settled."""

    out = await app.batch.coalesced("due", _read_due).run(event.data.message_id)
    if out is None or out.key in app.in_flight:
        return  # settled, or this process is still sending it (a slow first delivery)
    out.reconcile = event.data.reconcile or delivered > 1
    await transmit(app, out)


async def _read_due(session: AsyncSession, ids: list[str]) -> list[Outgoing | None]:
    """The rows of a pulled batch of due texts, in one ``SELECT ... IN`` (a read per text
    was a connection and a round trip each); Core rows, no ORM objects to build."""
    t = MESSAGES
    found = await session.execute(
        select(
            t.c.id,
            t.c.key,
            t.c.phone,
            t.c.body,
            t.c.session_id,
            t.c.rule,
            t.c.created_at,
            t.c.deadline_at,
            t.c.sending_by,
            t.c.status,
        ).where(t.c.id.in_(set(ids)))
    )
    rows = {row.id: None if row.status != "submitting" else outgoing_of(row) for row in found}
    # A copy each: the same text twice in a pull is two senders' own state.
    return [copy.copy(rows.get(message_id)) for message_id in ids]


async def transmit(app: Reminders, out: Outgoing) -> None:
    """Send a claimed message once: look first when an earlier attempt may have gone.
    Raises :class:`Unresolved` when that could not be told (the queue retries), and
    :class:`~shared.consumers.Deferred` while another process holds the row's send lease."""

    if not await take_lease(app, out):
        return
    if out.leased_by not in (None, app.instance):
        out.reconcile = True  # another process had it: its attempt may have gone
    app.in_flight.add(out.key)
    renewal = asyncio.create_task(_renew_lease(app, out.message_id))
    settled = False
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
        settled = True
    except SendFailed as failure:
        await _finish_failed(app, out, failure)
        settled = True
    finally:
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
        app.in_flight.discard(out.key)
        if not settled:
            await _release_lease(app, out.message_id)


async def take_lease(app: Reminders, out: Outgoing) -> bool:
    """Take the row's send lease: free, lapsed, or already ours, and still held by whom
    ``out`` saw (so two replicas reading the same row cannot both take it). False when
    the row was settled meanwhile; :class:`Deferred` while another process holds it.

    The leases of every send waiting at once are taken together (one conditional
    ``UPDATE ... RETURNING`` per holder seen, in the next group commit)."""
    now = app.now()
    lease = timedelta(seconds=app.settings.sms_send_lease_seconds)
    ask = _LeaseAsk(out.message_id, out.leased_by, app.instance, now, now + lease)
    if await app.batch.coalesced("leases", _take_leases).run(ask):
        return True
    async with app.uow.read() as session:
        row = await session.get(db.Message, out.message_id)
    if row is None or row.status != "submitting":
        return False
    until = row.sending_until or now + lease
    log.info("sms.leased_elsewhere", key=out.key)
    raise Deferred(max((until - now).total_seconds(), 0.0) + 1.0)


@dataclass(frozen=True)
class _LeaseAsk:
    message_id: str
    seen: str | None  # who held the lease as the sender read the row
    instance: str  # who asks
    now: datetime
    until: datetime


async def _take_leases(session: AsyncSession, asks: list[_LeaseAsk]) -> list[bool]:
    """The leases for ``asks``; a row asked for twice is won once (the second copy waits)."""
    groups: dict[tuple[str | None, str], list[_LeaseAsk]] = {}
    for ask in asks:
        groups.setdefault((ask.seen, ask.instance), []).append(ask)
    won: set[tuple[str, str]] = set()
    for (seen, instance), group in groups.items():
        ids = {ask.message_id for ask in group}
        now = max(ask.now for ask in group)  # the latest clock read: lapsed is lapsed
        until = max(ask.until for ask in group)
        result = await session.execute(
            update(MESSAGES)
            .where(
                MESSAGES.c.id.in_(ids),
                MESSAGES.c.status == "submitting",
                MESSAGES.c.sending_by.is_not_distinct_from(seen),
                or_(
                    MESSAGES.c.sending_until.is_(None),
                    MESSAGES.c.sending_until < now,
                    MESSAGES.c.sending_by == instance,
                ),
            )
            .values(sending_by=instance, sending_until=until)
            .returning(MESSAGES.c.id)
        )
        won.update((message_id, instance) for message_id in result.scalars())
    taken: list[bool] = []
    for ask in asks:
        key = (ask.message_id, ask.instance)
        taken.append(key in won)
        won.discard(key)
    return taken


async def _renew_lease(app: Reminders, message_id: str) -> None:
    """Keep the send lease while the provider is asked (its retries can take a while)."""
    seconds = app.settings.sms_send_lease_seconds

    async def write(session: AsyncSession) -> None:
        await session.execute(
            update(db.Message)
            .where(db.Message.id == message_id, db.Message.sending_by == app.instance)
            .values(sending_until=app.now() + timedelta(seconds=seconds))
        )

    while True:
        await asyncio.sleep(seconds / 3)
        try:
            await app.batch.run(write)
        except Exception as exc:  # the database is away: the next beat tries again
            log.warning("sms.lease_unrenewed", error=type(exc).__name__)


async def _release_lease(app: Reminders, message_id: str) -> None:
    """Give the lease up after an unresolved attempt, so the retry need not wait for it to
    lapse; ``sending_by`` stays, telling the next one to look at the provider first."""

    async def write(session: AsyncSession) -> None:
        await session.execute(
            update(db.Message)
            .where(db.Message.id == message_id, db.Message.sending_by == app.instance)
            .values(sending_until=None)
        )

    with contextlib.suppress(Exception):  # it lapses by itself otherwise
        await app.batch.run(write)


async def _finish_accepted(app: Reminders, out: Outgoing, accepted: Accepted) -> None:
    await app.batch.coalesced("results", _record_accepted).run((out, accepted, app.now()))
    # A line per text would be thousands in a burst: the message log (``GET /v1/messages``)
    # is where a person looks; failures and reconciliations stay at INFO and above.
    log.debug("sms.sent", key=out.key, sid=accepted.sid, attempts=accepted.attempts)


async def _record_accepted(
    session: AsyncSession, sent: list[tuple[Outgoing, Accepted, datetime]]
) -> list[None]:
    """The provider's answers for a batch of sends: one executemany, their ``sms.sent``
    events, and the callbacks that came before them."""
    await session.execute(
        update(MESSAGES)
        .where(MESSAGES.c.id == bindparam("b_id"))
        .values(
            provider_sid=bindparam("b_sid"),
            status=bindparam("b_status"),
            attempts=MESSAGES.c.attempts + bindparam("b_attempts"),
            submitted_at=bindparam("b_now"),
            updated_at=bindparam("b_now"),
        ),
        [
            {
                "b_id": out.message_id,
                "b_now": now,
                "b_sid": accepted.sid,
                "b_status": accepted.status if accepted.status in STATUS_RANK else "queued",
                "b_attempts": accepted.attempts,
            }
            for out, accepted, now in sent
        ],
    )
    await enqueue_all(
        session,
        [
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
            )
            for out, accepted, now in sent
        ],
    )
    await apply_early(session, [accepted.sid for _, accepted, _ in sent], sent[-1][2])
    return [None] * len(sent)


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
