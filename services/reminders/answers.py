"""The answers to an open check-in (a number) and an open waitlist offer (BOOK).

A number 0-10 answers the latest open check-in of that phone once: the score goes out as
``reminders.outcome.recorded`` (and the reply as ``reminders.reply.received`` intent
``checkin``) in the same transaction as the inbound message, whose ``MessageSid`` is
unique, so a replayed webhook records nothing twice. A number with no check-in open is
not recorded; the client gets a short note, never the question again. BOOK claims the
latest open offer: booking hears ``reminders.reply.received`` intent ``claim`` with the
offer's id and books the first claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.reminders import db, domain, keywords, questions, texts
from services.reminders.context import Reminders
from shared import events
from shared.outbox import enqueue

if TYPE_CHECKING:
    from services.reminders.replies import Inbound

log = structlog.get_logger(__name__)


def _client(clients: Sequence[db.Client], client_id: str | None) -> db.Client:
    return next((c for c in clients if c.id == client_id), clients[0])


async def _announce(
    session: AsyncSession,
    phone: str,
    client_id: str | None,
    intent: Literal["checkin", "claim"],
    session_id: str | None = None,
    offer_id: str | None = None,
) -> None:
    await enqueue(
        session,
        events.make_event(
            events.REPLY_RECEIVED,
            domain.SOURCE,
            events.ReplyReceived(
                phone=phone,
                client_id=client_id,
                session_id=session_id,
                intent=intent,
                offer_id=offer_id,
            ),
        ),
    )


async def record_score(
    session: AsyncSession,
    message: Inbound,
    clients: Sequence[db.Client],
    ctx: texts.TextContext,
    language: str | None,
    now: datetime,
) -> str:
    """A number: the score of the latest open check-in, recorded once; else a short note."""
    score = keywords.parse_score(message.body)
    open_checkin = await questions.latest_open(session, message.phone, now, "checkin")
    if (
        score is None
        or open_checkin is None
        or open_checkin.session_id is None
        or not await questions.answer(session, open_checkin, now, message.sid)
    ):
        log.info("checkin.not_recorded", open=open_checkin is not None)
        return texts.render("checkin_late", ctx, language)
    client = _client(clients, open_checkin.client_id)
    client_id = open_checkin.client_id or client.id
    await enqueue(
        session,
        events.make_event(
            events.OUTCOME_RECORDED,
            domain.SOURCE,
            events.OutcomeRecorded(
                client_id=client_id,
                session_id=open_checkin.session_id,
                score=score,
                answered_at=now,
            ),
            subject=open_checkin.session_id,
        ),
    )
    await _announce(session, message.phone, client_id, "checkin", open_checkin.session_id)
    log.info("checkin.recorded", session=open_checkin.session_id)
    return texts.render(
        "checkin_thanks", replace(ctx, first_name=client.first_name, number=str(score)), language
    )


async def _offer_context(
    session: AsyncSession,
    app: Reminders,
    offer_id: str | None,
    ctx: texts.TextContext,
    language: str | None,
) -> texts.TextContext:
    offer = await session.get(db.WaitlistOffer, offer_id) if offer_id else None
    if offer is None:
        return ctx
    zone = ZoneInfo(offer.location_timezone)
    return replace(
        ctx,
        when=texts.local_when(offer.slot_start, zone, language),
        until=texts.local_time(offer.expires_at, zone, language),
        location=offer.location_name,
        phone=texts.display_phone(offer.location_phone, app.settings.default_phone_region),
    )


async def claim_offer(
    session: AsyncSession,
    app: Reminders,
    message: Inbound,
    clients: Sequence[db.Client],
    ctx: texts.TextContext,
    language: str | None,
    now: datetime,
) -> str:
    """BOOK: claim the latest open offer once. A second BOOK for an offer already claimed
    gets the same acknowledgement and claims nothing more (booking would answer a second
    claim with "taken", and the client would be told the time they got is gone)."""
    offer_question = await questions.latest_open(session, message.phone, now, "offer")
    if offer_question is None:
        claimed = (
            await session.scalars(
                select(db.Question)
                .where(
                    db.Question.phone == message.phone,
                    db.Question.kind == "offer",
                    db.Question.answered_at.is_not(None),
                    db.Question.closes_at > now,
                )
                .order_by(db.Question.asked_at.desc())
                .limit(1)
            )
        ).first()
        if claimed is None:
            return texts.render("ack_book_none", ctx, language)
        offer_ctx = await _offer_context(session, app, claimed.offer_id, ctx, language)
        return texts.render("ack_book", offer_ctx, language)
    if not await questions.answer(session, offer_question, now, message.sid):
        return texts.render("ack_book_none", ctx, language)
    client = _client(clients, offer_question.client_id)
    await _announce(
        session,
        message.phone,
        offer_question.client_id or client.id,
        "claim",
        offer_id=offer_question.offer_id,
    )
    log.info("offer.claimed", offer=offer_question.offer_id)
    offer_ctx = await _offer_context(session, app, offer_question.offer_id, ctx, language)
    return texts.render("ack_book", replace(offer_ctx, first_name=client.first_name), language)


async def help_for(
    session: AsyncSession,
    app: Reminders,
    action: str,
    latest: db.Question,
    ctx: texts.TextContext,
    language: str | None,
) -> str:
    """A reply that is not an answer while a check-in or an offer is the latest question:
    one short help text, never the question again."""
    if action == "offer_help":
        ctx = await _offer_context(session, app, latest.offer_id, ctx, language)
    return texts.render(action, ctx, language)
