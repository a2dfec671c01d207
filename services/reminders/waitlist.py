"""Waitlist texts: an offer of a freed slot ("reply BOOK"), and "that time was taken".

Booking's ``booking.waitlist.*`` events are kept as ``WaitlistOffer`` rows
(``consumers.apply_waitlist_event``); the planner turns the texts they ask for into jobs
that run at once on the active instance, like every other text. An offer lasts minutes,
so it is sent now or never: without consent, with the location's ``waitlist_offer`` rule
disabled, in quiet hours, or once the offer closed, it is not sent and the log says why
(``domain.decide_now``); it is never deferred to the morning.

Who hears "taken": the client of every offer booking reports ``taken`` whose offer text
went out (booking decides which offers end that way: a late claim, or the other offers of
a slot that was filled). ``filled`` and ``expired`` only close the question.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.reminders import db, domain, texts
from services.reminders.consent import consent_of
from services.reminders.context import Reminders
from services.reminders.facts import message_by_key
from services.reminders.jobs import WAITLIST_JOB
from services.reminders.ledger import Recipient, claim, record_skip, skip
from services.reminders.questions import ask
from shared.scheduling import JobSpec

log = structlog.get_logger(__name__)

#: The texts an offer may ask for.
OFFER, TAKEN = "offer", "taken"


def waitlist_job_id(offer_id: str, what: str) -> str:
    return f"offer:{offer_id}:{what}"


def planned_text(offer: db.WaitlistOffer, what: str) -> domain.Planned:
    if what == OFFER:
        return domain.plan_offer(offer.id, offer.offered_at, offer.expires_at)
    return domain.plan_taken(offer.id, offer.closed_at or offer.offered_at)


def waitlist_jobs(offer: db.WaitlistOffer) -> list[JobSpec]:
    """The jobs of the texts ``offer`` still asks for, each due at once (its grace runs to
    the text's deadline: one that could run only later is dropped and logged)."""
    jobs = []
    for what in offer.pending or []:
        planned = planned_text(offer, what)
        jobs.append(
            JobSpec(
                func=WAITLIST_JOB,
                id=waitlist_job_id(offer.id, what),
                run_date=planned.due,
                args=(offer.id, what),
                misfire_grace_time=max(1, int((planned.deadline - planned.due).total_seconds())),
            )
        )
    return jobs


async def pending_offers(app: Reminders, limit: int) -> tuple[list[tuple[str, int]], list[JobSpec]]:
    """The offers whose texts are still to plan (id, change_seq), and their jobs."""
    async with app.uow.read() as session:
        rows = (
            await session.scalars(
                select(db.WaitlistOffer).where(db.WaitlistOffer.plan_pending.is_(True)).limit(limit)
            )
        ).all()
        return [(r.id, r.change_seq) for r in rows], [job for r in rows for job in waitlist_jobs(r)]


async def mark_planned(app: Reminders, offers: list[tuple[str, int]]) -> None:
    """Planned as read: an event that came meanwhile leaves its offer pending."""
    if not offers:
        return
    async with app.uow.write() as session:
        for offer_id, seq in offers:
            await session.execute(
                update(db.WaitlistOffer)
                .where(db.WaitlistOffer.id == offer_id, db.WaitlistOffer.change_seq == seq)
                .values(plan_pending=False)
            )


def _text(app: Reminders, offer: db.WaitlistOffer, client: db.Client, what: str) -> str:
    zone = ZoneInfo(offer.location_timezone)
    ctx = texts.TextContext(
        first_name=client.first_name,
        when=texts.local_when(offer.slot_start, zone, client.language),
        location=offer.location_name,
        phone=texts.display_phone(offer.location_phone, app.settings.default_phone_region),
        until=texts.local_time(offer.expires_at, zone, client.language),
    )
    return texts.render(
        "waitlist_offer" if what == OFFER else "waitlist_taken", ctx, client.language
    )


async def send_waitlist_text(app: Reminders, offer_id: str, what: str) -> None:
    """An offer's job fired: send its text now, or record why not."""
    if not app.is_active() and not await app.lease_back():
        return  # not ours to send; the offer will have lapsed by the next holder's turn
    now = app.now()
    async with app.uow.read() as session:
        offer = await session.get(db.WaitlistOffer, offer_id)
        if offer is None:
            return
        client = await session.get(db.Client, offer.client_id)
        rules = (await app.rules.current(session)).for_location(offer.location_id)
        planned = planned_text(offer, what)
        decision: domain.Send | domain.Skip
        if what == OFFER and not rules.allows("waitlist_offer"):
            decision = domain.Skip("disabled")
        elif what == OFFER and offer.closed_at is not None and offer.closed_at <= now:
            decision = domain.Skip("closed")
        else:
            consent = await consent_of(session, client)
            zone = ZoneInfo(offer.location_timezone)
            decision = domain.decide_now(planned, consent, now, zone, rules.quiet_hours)
        if what == TAKEN:
            offered = await message_by_key(session, planned_text(offer, OFFER).key)
            if offered is None or offered.status == "skipped":
                return  # the client never heard of the offer: nothing to take back
        existing = await message_by_key(session, planned.key)
        body = (
            _text(app, offer, client, what)
            if isinstance(decision, domain.Send) and client is not None
            else ""
        )
    to = Recipient(
        phone=client.phone if client else "",
        client_id=offer.client_id,
        location_id=offer.location_id,
    )
    if isinstance(decision, domain.Skip):
        if existing is None:
            await skip(app, planned, decision.reason, to)
        return
    if not body:
        return

    async def open_question(session: AsyncSession) -> None:
        await ask(
            session,
            key=planned.key,
            phone=to.phone,
            kind="offer",
            asked_at=now,
            closes_at=offer.closed_at or offer.expires_at,
            client_id=offer.client_id,
            offer_id=offer.id,
        )

    # Sent already, or being sent, or queued now for a sender with its question open.
    await claim(app, planned, body, existing, to, open_question if what == OFFER else None)


async def waitlist_job_missed(app: Reminders, offer_id: str, what: str) -> None:
    """An offer's job ran too late to run at all (the service was down): logged."""
    async with app.uow.write() as session:
        offer = await session.get(db.WaitlistOffer, offer_id)
        if offer is None:
            return
        client = await session.get(db.Client, offer.client_id)
        to = Recipient(
            phone=client.phone if client else "",
            client_id=offer.client_id,
            location_id=offer.location_id,
        )
        await record_skip(session, planned_text(offer, what), "missed", to, app.now())
