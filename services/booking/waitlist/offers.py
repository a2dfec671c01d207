"""Offers of freed slots: made in the transaction that freed the slot, passed on when one
lapses, closed when the slot is claimed.

A slot freed by a cancel or a move (never a no-show: its time has passed) is offered to
up to :data:`~rules.OFFERS_PER_SLOT` waiting entries at once, in the order they joined.
An entry is skipped when its client:

- has no SMS consent: an offer is a text, and a client we may not text cannot get one;
- was offered this slot before (the table's unique key backs this);
- holds an open offer of another slot: "BOOK" answers the latest open question to a
  phone, so one open offer per client keeps it unambiguous;
- already has a session at that time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.booking import db, domain, hours
from services.booking.usecases import SOURCE, Booking
from services.booking.usecases.clients import client_ref
from services.booking.waitlist import rules
from shared import events
from shared.ids import new_id
from shared.outbox import enqueue
from shared.timeutil import zone
from shared.uow import after_commit

#: The after-commit waker of the lapse loop (``UnitOfWork.on_commit``).
LAPSES = "waitlist-lapses"

#: Entries read per look while looking for the next ones in line.
_CANDIDATE_BATCH = 100


@dataclass(frozen=True)
class FreedSlot:
    """The time a cancelled or moved session held, as it was before the change."""

    session_id: str
    location_id: str
    treatment_id: str
    therapist_id: str
    start: datetime
    end: datetime


def freed(row: db.Session) -> FreedSlot:
    """The slot ``row`` holds now (read before it is cancelled or moved)."""
    return FreedSlot(
        row.id, row.location_id, row.treatment_id, row.therapist_id, row.start_at, row.end_at
    )


def left(before: FreedSlot, row: db.Session) -> bool:
    """Whether the change gave up ``before``'s time: cancelled, or moved to another time,
    therapist or location."""
    return row.status == domain.CANCELLED or (
        (row.start_at, row.therapist_id, row.location_id)
        != (before.start, before.therapist_id, before.location_id)
    )


async def slot_freed(session: AsyncSession, app: Booking, slot: FreedSlot) -> None:
    """Offer ``slot`` to the waitlist, in the caller's transaction (a cancel, a move)."""
    location = await session.get(db.Location, slot.location_id)
    treatment = await session.get(db.Treatment, slot.treatment_id)
    if location is None or treatment is None or not treatment.active:
        return
    row = db.WaitlistSlot(
        id=new_id(),
        location_id=slot.location_id,
        treatment_id=slot.treatment_id,
        therapist_id=slot.therapist_id,
        start_at=slot.start,
        end_at=slot.end,
        freed_by=slot.session_id,
        status=rules.OPEN,
        created_at=app.clock(),
        location=location,
    )
    if not await _still_bookable(session, app, row, treatment):
        return
    entries = await _next_in_line(session, row, rules.OFFERS_PER_SLOT)
    if not entries:
        return  # nobody waits for it: no slot row either
    session.add(row)
    for entry in entries:
        await _offer(session, app, row, entry)


async def pass_on(session: AsyncSession, app: Booking, slot: db.WaitlistSlot) -> None:
    """Top ``slot``'s open offers up to the limit with the next entries in line; close the
    slot when it cannot be booked any more or nobody is left to offer it to."""
    if slot.status != rules.OPEN:
        return
    treatment = await session.get(db.Treatment, slot.treatment_id)
    if treatment is None or not await _still_bookable(session, app, slot, treatment):
        await close_slot(session, slot, app.clock())
        return
    open_now = await session.scalar(
        select(func.count())
        .select_from(db.WaitlistOffer)
        .where(db.WaitlistOffer.slot_id == slot.id, db.WaitlistOffer.status == rules.OPEN)
    )
    wanted = rules.OFFERS_PER_SLOT - (open_now or 0)
    entries = await _next_in_line(session, slot, wanted) if wanted > 0 else []
    for entry in entries:
        await _offer(session, app, slot, entry)
    if not open_now and not entries:
        slot.status = rules.CLOSED


async def close_slot(
    session: AsyncSession, slot: db.WaitlistSlot, now: datetime, *, except_offer: str | None = None
) -> None:
    """The slot is gone: every other open offer of it is closed as taken (its client is told)."""
    slot.status = rules.FILLED if slot.session_id else rules.CLOSED
    others = (
        await session.scalars(
            select(db.WaitlistOffer).where(
                db.WaitlistOffer.slot_id == slot.id,
                db.WaitlistOffer.status == rules.OPEN,
                db.WaitlistOffer.id != (except_offer or ""),
            )
        )
    ).all()
    for offer in others:
        offer.status = rules.TAKEN
        offer.closed_at = now
        await announce(session, offer, events.WAITLIST_TAKEN)


async def lock_slot(session: AsyncSession, slot_id: str) -> db.WaitlistSlot:
    """The slot, locked for this transaction (PostgreSQL; SQLite serializes writers anyway).

    Whatever changes a slot's offers (a claim, a lapse) locks the slot first, so two of them
    queue on one row instead of locking two offers in opposite orders (a deadlock)."""
    query = (
        select(db.WaitlistSlot)
        .where(db.WaitlistSlot.id == slot_id)
        .with_for_update(of=db.WaitlistSlot)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(query)).one()


async def lapse(session: AsyncSession, app: Booking, offer_id: str) -> bool:
    """Close the open offer ``offer_id`` as expired and pass its slot on; ``False`` when it
    was no longer open (claimed, or closed meanwhile: the conditional UPDATE decides)."""
    slot_id = await session.scalar(
        select(db.WaitlistOffer.slot_id).where(db.WaitlistOffer.id == offer_id)
    )
    if slot_id is None:
        return False
    await lock_slot(session, slot_id)
    changed = await session.execute(
        update(db.WaitlistOffer)
        .where(db.WaitlistOffer.id == offer_id, db.WaitlistOffer.status == rules.OPEN)
        .values(status=rules.EXPIRED, closed_at=app.clock())
        .execution_options(synchronize_session=False)
    )
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        return False
    offer = await session.get(db.WaitlistOffer, offer_id, populate_existing=True)
    assert offer is not None
    await announce(session, offer, events.WAITLIST_EXPIRED)
    await pass_on(session, app, offer.slot)
    return True


async def lapse_due(app: Booking, *, batch: int = 100) -> int:
    """Lapse up to ``batch`` offers whose time is up; returns how many were due. Looks in a
    read transaction first, so an idle loop never takes SQLite's write lock."""
    now = app.clock()
    query = (
        select(db.WaitlistOffer.id)
        .where(db.WaitlistOffer.status == rules.OPEN, db.WaitlistOffer.expires_at <= now)
        .order_by(db.WaitlistOffer.expires_at)
        .limit(batch)
    )
    async with app.uow.read() as session:
        due = (await session.scalars(query)).all()
    if not due:
        return 0
    async with app.uow.write() as session:
        for offer_id in due:
            await lapse(session, app, offer_id)
    return len(due)


async def next_expiry(app: Booking) -> datetime | None:
    """When the earliest open offer lapses (``None``: no offer is open)."""
    async with app.uow.read() as session:
        found: datetime | None = await session.scalar(
            select(func.min(db.WaitlistOffer.expires_at)).where(
                db.WaitlistOffer.status == rules.OPEN
            )
        )
    return found


def waitlist_event(offer: db.WaitlistOffer) -> events.WaitlistEvent:
    """The offer as reminders needs it to text the client (no health information)."""
    slot = offer.slot
    location = slot.location
    return events.WaitlistEvent(
        offer_id=offer.id,
        entry_id=offer.entry_id,
        client=client_ref(offer.entry.client),
        slot=events.WaitlistSlot(
            start=slot.start_at,
            end=slot.end_at,
            therapist_id=slot.therapist_id,
            location=events.SlotLocationRef(
                id=location.id, name=location.name, timezone=location.timezone, phone=location.phone
            ),
        ),
        expires_at=offer.expires_at,
    )


async def announce(session: AsyncSession, offer: db.WaitlistOffer, event_type: str) -> None:
    await enqueue(
        session, events.make_event(event_type, SOURCE, waitlist_event(offer), subject=offer.id)
    )


# -- helpers ------------------------------------------------------------------------------


async def _offer(
    session: AsyncSession, app: Booking, slot: db.WaitlistSlot, entry: db.WaitlistEntry
) -> None:
    now = app.clock()
    offer = db.WaitlistOffer(
        id=new_id(),
        slot_id=slot.id,
        entry_id=entry.id,
        client_id=entry.client_id,
        status=rules.OPEN,
        offered_at=now,
        expires_at=now + app.offer_ttl,
        slot=slot,
        entry=entry,
    )
    session.add(offer)
    await announce(session, offer, events.WAITLIST_OFFERED)
    after_commit(session, LAPSES)


async def _still_bookable(
    session: AsyncSession, app: Booking, slot: db.WaitlistSlot, treatment: db.Treatment
) -> bool:
    """Far enough ahead to be booked, and its therapist still free then."""
    notice = timedelta(minutes=slot.location.min_notice_minutes)
    if slot.start_at < app.clock() + notice:
        return False
    held_until = slot.start_at + timedelta(
        minutes=treatment.duration_minutes + treatment.buffer_minutes
    )
    busy = await session.scalar(
        select(
            exists().where(
                db.Session.therapist_id == slot.therapist_id,
                db.Session.status.in_(hours.LIVE),
                db.Session.start_at < held_until,
                db.Session.blocked_until > slot.start_at,
            )
        )
    )
    return not busy


async def _next_in_line(
    session: AsyncSession, slot: db.WaitlistSlot, wanted: int
) -> list[db.WaitlistEntry]:
    """The first ``wanted`` waiting entries ``slot`` fits, in the order they joined."""
    tz = zone(slot.location.timezone)
    day = slot.start_at.astimezone(tz).date()
    offer = db.WaitlistOffer
    query = (
        select(db.WaitlistEntry)
        .join(db.Client, db.Client.id == db.WaitlistEntry.client_id)
        .where(
            db.WaitlistEntry.location_id == slot.location_id,
            db.WaitlistEntry.treatment_id == slot.treatment_id,
            db.WaitlistEntry.status == rules.WAITING,
            (db.WaitlistEntry.therapist_id.is_(None))
            | (db.WaitlistEntry.therapist_id == slot.therapist_id),
            db.WaitlistEntry.earliest <= day,
            db.WaitlistEntry.latest >= day,
            # No consent, no text: an offer nobody can be told of would only hold the slot.
            db.Client.sms_consent.is_(True),
            ~exists().where(
                offer.client_id == db.WaitlistEntry.client_id,
                (offer.slot_id == slot.id) | (offer.status == rules.OPEN),
            ),
            ~exists().where(
                db.Session.client_id == db.WaitlistEntry.client_id,
                db.Session.status.in_(hours.LIVE),
                db.Session.start_at < slot.end_at,
                db.Session.end_at > slot.start_at,
            ),
        )
        .order_by(db.WaitlistEntry.created_at, db.WaitlistEntry.id)
    )
    chosen: list[db.WaitlistEntry] = []
    clients: set[str] = set()
    wish_of = _wish
    offset = 0
    while len(chosen) < wanted:
        page = (await session.scalars(query.offset(offset).limit(_CANDIDATE_BATCH))).unique().all()
        for entry in page:
            if entry.client_id in clients:
                continue
            if rules.fits(
                wish_of(entry), start=slot.start_at, therapist_id=slot.therapist_id, tz=tz
            ):
                chosen.append(entry)
                clients.add(entry.client_id)
                if len(chosen) == wanted:
                    break
        if len(page) < _CANDIDATE_BATCH:
            break
        offset += _CANDIDATE_BATCH
    return chosen


def _wish(entry: db.WaitlistEntry) -> rules.Wish:
    return rules.Wish(
        therapist_id=entry.therapist_id,
        earliest=entry.earliest,
        latest=entry.latest,
        times_of_day=tuple(entry.times_of_day or ()),
    )


__all__ = [
    "LAPSES",
    "FreedSlot",
    "announce",
    "close_slot",
    "freed",
    "lapse",
    "lapse_due",
    "left",
    "lock_slot",
    "next_expiry",
    "pass_on",
    "slot_freed",
]
