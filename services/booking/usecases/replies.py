"""What the reminders service tells us, applied by booking's consumers: a client texted
C (their next session is confirmed), a phone opted out or back in (every client with
that phone follows). Each runs inside the consumer's unit of work."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.booking import db, domain
from services.booking.usecases import Booking
from services.booking.usecases.clients import announce_client, set_consent
from services.booking.usecases.sessions import announce_session
from services.booking.waitlist import claims
from shared import events


async def apply_reply(app: Booking, session: AsyncSession, reply: events.ReplyReceived) -> None:
    """A client texted C: their next booked session becomes confirmed (its event carries
    the client's page like every session event). BOOK claims a waitlist offer."""
    if reply.intent == "claim":
        await claims.apply_claim(app, session, reply)
        return
    if reply.intent != "confirm":
        return
    now = app.clock()
    query = select(db.Session).where(db.Session.status == domain.BOOKED, db.Session.start_at > now)
    if reply.session_id:
        query = query.where(db.Session.id == reply.session_id)
    elif reply.client_id:
        query = query.where(db.Session.client_id == reply.client_id)
    else:
        query = query.where(
            db.Session.client_id.in_(select(db.Client.id).where(db.Client.phone == reply.phone))
        )
    row = (await session.scalars(query.order_by(db.Session.start_at).limit(1))).first()
    if row is None:
        return
    row.status = domain.next_status(row.status, "confirm")
    row.version += 1
    row.updated_at = now
    await announce_session(app, session, row, events.SESSION_CONFIRMED)


async def apply_consent(
    session: AsyncSession, change: events.ConsentChanged, changed_at: datetime, now: datetime
) -> None:
    """A phone opted out (STOP) or back in (START) at ``changed_at``: every client with that
    phone follows, unless their consent was changed later than that (a STOP retried after
    the START that followed it, or the front desk's own later change): the latest wins."""
    clients = (
        await session.scalars(select(db.Client).where(db.Client.phone == change.phone))
    ).all()
    for client in clients:
        if client.sms_consent == change.sms_consent:
            continue
        if client.sms_consent_at is not None and client.sms_consent_at > changed_at:
            continue
        set_consent(client, change.sms_consent, f"sms:{change.source}", changed_at)
        client.updated_at = now
        await announce_client(session, client, events.CLIENT_UPDATED)
