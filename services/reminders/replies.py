"""A phone texts the clinic: keywords, consent, confirmations, and the one answer.

A reply is read against the latest question still open to that phone (``questions.py``,
``keywords.read_reply``): C and R keep their meaning, a number answers an open check-in,
BOOK claims an open waitlist offer (``answers.py``), and anything else gets the help of
whatever is open. Twilio's own keywords are never read as anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.reminders import answers, db, domain, keywords, questions, texts
from services.reminders.consent import set_consent
from services.reminders.context import Reminders
from shared import events
from shared.ids import new_id
from shared.outbox import enqueue

log = structlog.get_logger(__name__)


async def _next_session(
    session: AsyncSession, client_ids: Sequence[str], now: datetime, statuses: frozenset[str]
) -> db.Session | None:
    return (
        await session.scalars(
            select(db.Session)
            .where(
                db.Session.client_id.in_(client_ids),
                db.Session.status.in_(statuses),
                db.Session.start_at > now,
            )
            .order_by(db.Session.start_at)
            .limit(1)
        )
    ).first()


async def _any_location(session: AsyncSession) -> db.Session | None:
    return (
        await session.scalars(select(db.Session).order_by(db.Session.updated_at.desc()).limit(1))
    ).first()


@dataclass(frozen=True)
class Inbound:
    sid: str
    phone: str
    body: str


async def handle_inbound(app: Reminders, message: Inbound) -> str | None:
    """A phone texted the clinic. Returns the one answer to send back, if any.

    STOP-family and START-family words are answered by Twilio itself (and an app's answer
    to an opted-out phone would fail), so those get none from us.
    """
    now = app.now()
    intent = keywords.parse_reply(message.body)
    region = app.settings.default_phone_region
    async with app.uow.write() as session:
        seen = (
            await session.scalars(select(db.Message).where(db.Message.provider_sid == message.sid))
        ).first()
        if seen is not None:
            answer = await session.scalar(
                select(db.Message.body).where(db.Message.in_reply_to == seen.id)
            )
            return answer
        inbound = db.Message(
            id=new_id(),
            direction="inbound",
            phone=message.phone,
            body=message.body,
            status="received",
            provider_sid=message.sid,
            reason=intent,
            created_at=now,
            updated_at=now,
        )
        session.add(inbound)
        clients = (
            await session.scalars(select(db.Client).where(db.Client.phone == message.phone))
        ).all()
        client_ids = [c.id for c in clients]
        answer = None
        if intent in ("opt_out", "opt_in"):
            await set_consent(session, message.phone, intent == "opt_in", "sms", now)
        else:
            upcoming = (
                await _next_session(session, client_ids, now, domain.UPCOMING) if clients else None
            )
            place = upcoming or (await _any_location(session))
            language = clients[0].language if clients else None
            ctx = texts.TextContext(
                first_name=clients[0].first_name if clients else "",
                location=place.location_name if place else app.settings.clinic_name,
                phone=texts.display_phone(
                    place.location_phone if place else app.settings.clinic_phone, region
                ),
            )
            latest = await questions.latest_open(session, message.phone, now) if clients else None
            action = keywords.read_reply(intent, latest.kind if latest is not None else None)
            if intent == "help":
                answer = texts.render("help", ctx, language)
            elif not clients:
                answer = texts.render("unknown_phone", ctx)
            elif action == "confirm":
                target = await _next_session(session, client_ids, now, frozenset({"booked"}))
                target = target or upcoming
                if target is not None:
                    ctx = texts.TextContext(
                        first_name=next(c.first_name for c in clients if c.id == target.client_id),
                        when=texts.local_when(
                            target.start_at, ZoneInfo(target.location_timezone), language
                        ),
                        location=target.location_name,
                        phone=ctx.phone,
                    )
                    answer = texts.render("ack_confirm", ctx, language)
                else:
                    answer = texts.render("ack_nothing_to_confirm", ctx, language)
                await _announce_reply(session, message.phone, clients, target, "confirm")
            elif action == "reschedule":
                # The client's own page for the next visit, where a new time can be picked;
                # the location's phone when no page is known.
                link = upcoming.manage_url if upcoming is not None else None
                answer = texts.render("ack_reschedule", replace(ctx, link=link or ""), language)
                await _announce_reply(session, message.phone, clients, upcoming, "reschedule")
            elif action == "record_score":
                answer = await answers.record_score(session, message, clients, ctx, language, now)
            elif action == "claim":
                answer = await answers.claim_offer(
                    session, app, message, clients, ctx, language, now
                )
            elif action in ("checkin_help", "offer_help") and latest is not None:
                answer = await answers.help_for(session, app, action, latest, ctx, language)
                await _announce_reply(session, message.phone, clients, upcoming, "other")
            else:
                answer = texts.render("other", ctx, language)
                await _announce_reply(session, message.phone, clients, upcoming, "other")
            if intent == "help" and clients:
                await _announce_reply(session, message.phone, clients, upcoming, "help")
        if answer is not None:
            session.add(
                db.Message(
                    id=new_id(),
                    direction="reply",
                    phone=message.phone,
                    body=answer,
                    status="replied",
                    in_reply_to=inbound.id,
                    client_id=client_ids[0] if client_ids else None,
                    created_at=now,
                    updated_at=now,
                )
            )
    log.info("reply.received", phone=message.phone, intent=intent, known=bool(client_ids))
    return answer


async def _announce_reply(
    session: AsyncSession,
    phone: str,
    clients: Sequence[db.Client],
    target: db.Session | None,
    intent: Literal["confirm", "reschedule", "help", "other"],
) -> None:
    client_id = target.client_id if target is not None else clients[0].id
    await enqueue(
        session,
        events.make_event(
            events.REPLY_RECEIVED,
            domain.SOURCE,
            events.ReplyReceived(
                phone=phone,
                client_id=client_id,
                session_id=target.id if target is not None else None,
                intent=intent,
            ),
        ),
    )
