"""The send ledger: one row per planned message (``Message.key``, unique), written before
the provider is called. A claimed row is the right to send that message once; a skipped
one says why it never went."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Row, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.reminders import db, domain
from services.reminders.batch import enqueue_all
from services.reminders.context import Reminders
from services.reminders.facts import message_by_key
from shared import events
from shared.ids import new_id
from shared.outbox import enqueue

log = structlog.get_logger(__name__)


#: The question a text asks, opened with its claim: a row (added unless its key has one),
#: or a function adding it.
Question = db.Question | Callable[[AsyncSession], Awaitable[None]]


@dataclass(frozen=True)
class Recipient:
    """Who a message is for, and what it is about (the ledger row's references)."""

    phone: str
    client_id: str | None
    session_id: str | None = None
    referral_id: str | None = None
    location_id: str | None = None


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
    #: The row's send lease as read (see ``transmit.take_lease``).
    leased_by: str | None = None


def outgoing_of(row: db.Message | Row[*tuple[Any, ...]], reconcile: bool = False) -> Outgoing:
    """A ledger row (the ORM's, or a Core row with the same columns) as a text to send."""
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
        leased_by=row.sending_by,
    )


def _row(
    planned: domain.Planned, to: Recipient, now: datetime, *, status: str, body: str = ""
) -> db.Message:
    return db.Message(
        id=new_id(),
        key=planned.key,
        direction="outbound",
        session_id=to.session_id,
        referral_id=to.referral_id,
        client_id=to.client_id,
        location_id=to.location_id,
        rule=planned.rule,
        kind=planned.kind,
        phone=to.phone,
        body=body,
        status=status,
        due_at=planned.due,
        deadline_at=planned.deadline,
        created_at=now,
        updated_at=now,
    )


async def record_skip(
    session: AsyncSession, planned: domain.Planned, reason: str, to: Recipient, now: datetime
) -> None:
    """Keep a row saying why the message never went (unless the key has one already)."""
    if await message_by_key(session, planned.key) is not None:
        return
    row = _row(planned, to, now, status="skipped")
    row.reason = reason
    session.add(row)
    log.info("message.dropped", key=planned.key, rule=planned.rule, reason=reason)


async def skip(app: Reminders, planned: domain.Planned, reason: str, to: Recipient) -> None:
    async with app.uow.write() as session:
        await record_skip(session, planned, reason, to, app.now())


async def claim(
    app: Reminders,
    planned: domain.Planned,
    body: str,
    existing: db.Message | None,
    to: Recipient,
    question: Question | None = None,
) -> bool:
    """Write the ledger row and its ``reminders.due`` message in one transaction: the row
    is the right to send the message once, the queue message has one replica send it.
    False if it is not ours to send (sent, being sent, or claimed elsewhere).

    ``existing`` is the row for the key as read just before, outside the write lock; the
    write itself is guarded by the key's uniqueness (or the row's status), so two claims
    of one key cannot both win. ``question`` opens the question the text asks in the same
    transaction, so a reply can never arrive before it.
    """
    now = app.now()
    if existing is not None:
        if existing.status != "skipped":
            return False  # sent, or being sent (the queue has it), or failed for good
        async with app.uow.write() as session:
            result = await session.execute(
                update(db.Message)
                .where(db.Message.id == existing.id, db.Message.status == "skipped")
                .values(
                    status="submitting",
                    reason=None,
                    body=body,
                    phone=to.phone,
                    sending_by=None,
                    sending_until=None,
                    updated_at=now,
                )
            )
            if not getattr(result, "rowcount", 0):
                return False
            await enqueue(session, due_event(existing.id))
            await _open_questions(session, [question])
        return True
    row = _row(planned, to, now, status="submitting", body=body)
    row.attempts = 0
    if await app.batch.coalesced("claims", _insert_claims).run((row, question)):
        return True
    log.info("job.claimed_elsewhere", key=planned.key)
    return False


async def _insert_claims(
    session: AsyncSession, claims: list[tuple[db.Message, Question | None]]
) -> list[bool]:
    """The ledger rows of the claims waiting at once, their ``reminders.due`` messages and
    questions: one flush (an executemany) and one outbox insert. A key claimed elsewhere
    fails the whole savepoint; then each claim is tried in a savepoint of its own, so one
    lost claim is never another's."""
    try:
        async with session.begin_nested():
            await _add_claims(session, claims)
        return [True] * len(claims)
    except IntegrityError:
        if len(claims) == 1:
            return [False]
    won: list[bool] = []
    for claim in claims:
        try:
            async with session.begin_nested():
                await _add_claims(session, [claim])
            won.append(True)
        except IntegrityError:
            won.append(False)
    return won


async def _add_claims(
    session: AsyncSession, claims: list[tuple[db.Message, Question | None]]
) -> None:
    session.add_all([row for row, _ in claims])
    await session.flush()
    await enqueue_all(session, [due_event(row.id) for row, _ in claims])
    await _open_questions(session, [question for _, question in claims])
    await session.flush()


async def _open_questions(session: AsyncSession, questions: list[Question | None]) -> None:
    """Once per ledger key (a reconciled send asks nothing new): one look for the rows."""
    rows = [q for q in questions if isinstance(q, db.Question)]
    if rows:
        asked = set(
            await session.scalars(
                select(db.Question.id).where(db.Question.id.in_({q.id for q in rows}))
            )
        )
        for row in rows:
            if row.id not in asked:
                asked.add(row.id)
                session.add(row)
    for question in questions:
        if question is not None and not isinstance(question, db.Question):
            await question(session)


def due_event(message_id: str) -> events.CloudEvent[events.SmsDue]:
    """``reminders.due`` for a claimed row (the row holds the phone and the body)."""
    return events.make_event(
        events.SMS_DUE, domain.SOURCE, events.SmsDue(message_id=message_id), subject=message_id
    )
