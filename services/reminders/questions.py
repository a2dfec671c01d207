"""The questions texted to a phone and until when each is open.

A text that asks something (C for a session, 0-10 for a check-in, BOOK for a waitlist
offer) leaves a row here when it is claimed for sending; a reply is read against the
latest one still open (``keywords.read_reply``). A check-in is answered once: the row's
``answered_at`` is set by one conditional update, so a replayed or concurrent reply
cannot record a second score.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.reminders import db, keywords


async def ask(
    session: AsyncSession,
    *,
    key: str,
    phone: str,
    kind: keywords.QuestionKind,
    asked_at: datetime,
    closes_at: datetime,
    client_id: str | None,
    session_id: str | None = None,
    offer_id: str | None = None,
) -> None:
    """Remember a question (once per ledger key: a reconciled send asks nothing new)."""
    if await session.get(db.Question, key) is not None:
        return
    session.add(
        db.Question(
            id=key,
            phone=phone,
            kind=kind,
            client_id=client_id,
            session_id=session_id,
            offer_id=offer_id,
            asked_at=asked_at,
            closes_at=closes_at,
        )
    )


async def latest_open(
    session: AsyncSession, phone: str, now: datetime, kind: str | None = None
) -> db.Question | None:
    """The latest question to ``phone`` still open now (of ``kind`` if given)."""
    query = select(db.Question).where(
        db.Question.phone == phone,
        db.Question.answered_at.is_(None),
        db.Question.asked_at <= now,
        db.Question.closes_at > now,
    )
    if kind is not None:
        query = query.where(db.Question.kind == kind)
    return (await session.scalars(query.order_by(db.Question.asked_at.desc()).limit(1))).first()


async def answer(session: AsyncSession, question: db.Question, now: datetime, sid: str) -> bool:
    """Mark ``question`` answered by message ``sid``; False when another answer won."""
    result = await session.execute(
        update(db.Question)
        .where(db.Question.id == question.id, db.Question.answered_at.is_(None))
        .values(answered_at=now, answer_sid=sid)
    )
    return bool(getattr(result, "rowcount", 0))


async def close_offer_questions(session: AsyncSession, offer_id: str, at: datetime) -> None:
    """An offer filled, taken or expired: BOOK no longer claims it."""
    await session.execute(
        update(db.Question)
        .where(db.Question.offer_id == offer_id, db.Question.closes_at > at)
        .values(closes_at=at)
    )
