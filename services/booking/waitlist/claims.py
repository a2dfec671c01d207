"""A client claims an offer by text (``BOOK``): the first claim of an open slot books it.

Two claims of one slot may arrive at the same moment (two offers of it, two consumers,
two replicas). The database decides, not the process: a conditional UPDATE turns the
offer from open to filled, then another turns the slot from open to filled. On
PostgreSQL the second claim's UPDATE waits for the first transaction's row lock and then
finds the slot no longer open; on SQLite write transactions are serialized. The booking
itself goes through :func:`~services.booking.usecases.sessions.book_in`, the use case of
``POST /v1/sessions`` (its checks, its exclusion constraints, its ``booking.session.booked``).
"""

from __future__ import annotations

import structlog
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.booking import db
from services.booking.schemas import SessionIn
from services.booking.usecases import Booking
from services.booking.usecases.sessions import book_in, overlap_error
from services.booking.waitlist import offers, rules
from shared import events
from shared.auth import EVERYTHING
from shared.errors import DomainError

log = structlog.get_logger(__name__)


async def apply_claim(app: Booking, session: AsyncSession, reply: events.ReplyReceived) -> None:
    """Book the offered slot for the first claim; tell a late claim it is taken."""
    if reply.offer_id is None:
        return
    offer = await session.get(db.WaitlistOffer, reply.offer_id)
    if offer is None:
        log.info("waitlist.claim_unknown_offer")
        return
    slot = await offers.lock_slot(session, offer.slot_id)
    now = app.clock()
    won = await session.execute(
        update(db.WaitlistOffer)
        .where(
            db.WaitlistOffer.id == offer.id,
            db.WaitlistOffer.status == rules.OPEN,
            db.WaitlistOffer.expires_at > now,
        )
        .values(status=rules.FILLED, closed_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.refresh(offer)
    if won.rowcount != 1:  # type: ignore[attr-defined]
        if offer.status != rules.FILLED:  # a repeated BOOK of the winning offer says nothing
            await offers.announce(session, offer, events.WAITLIST_TAKEN)
        return
    if offer.entry.status != rules.WAITING:  # filled by another offer, or removed
        await _too_late(session, offer)
        await offers.pass_on(session, app, offer.slot)
        return
    slot_won = await session.execute(
        update(db.WaitlistSlot)
        .where(db.WaitlistSlot.id == offer.slot_id, db.WaitlistSlot.status == rules.OPEN)
        .values(status=rules.FILLED)
        .execution_options(synchronize_session=False)
    )
    await session.refresh(slot)
    if slot_won.rowcount != 1:  # type: ignore[attr-defined]
        await _too_late(session, offer)
        return
    try:
        async with session.begin_nested():
            booked = await book_in(
                session,
                app,
                SessionIn(
                    client_id=offer.client_id,
                    service_id=slot.treatment_id,
                    location_id=slot.location_id,
                    start=slot.start_at,
                    therapist_id=slot.therapist_id,
                ),
                scope=EVERYTHING,
            )
            await session.flush()
    except (DomainError, IntegrityError) as exc:
        if isinstance(exc, IntegrityError) and overlap_error(exc) is None:
            raise
        # Booked another way meanwhile (the front desk, a move), or too close to its
        # start now: the slot is gone for everyone.
        log.info("waitlist.slot_gone", reason=type(exc).__name__)
        slot.status = rules.CLOSED
        await _too_late(session, offer)
        await offers.close_slot(session, slot, now)
        return
    slot.session_id = booked.id
    entry = offer.entry
    entry.status, entry.session_id, entry.ended_at = rules.FILLED, booked.id, now
    await offers.announce(session, offer, events.WAITLIST_FILLED)
    await offers.close_slot(session, slot, now, except_offer=offer.id)


async def _too_late(session: AsyncSession, offer: db.WaitlistOffer) -> None:
    """The claim came after the slot went: the client is told it is taken."""
    offer.status = rules.TAKEN
    await offers.announce(session, offer, events.WAITLIST_TAKEN)
