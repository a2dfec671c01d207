"""The front desk keeps the waitlist: add an entry, list them, take one off."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.booking import db, domain, queries
from services.booking.scope import get_visible, visible
from services.booking.usecases import Booking, get_or_404
from services.booking.waitlist import offers, rules
from services.booking.waitlist.schemas import WaitlistEntryIn
from shared.auth import Scope
from shared.errors import InvalidRequest
from shared.ids import new_id
from shared.pagination import PageRequest, keyset
from shared.timeutil import zone

ENTRY_ORDER = (db.WaitlistEntry.created_at, db.WaitlistEntry.id)
ENTRY_KINDS = (datetime, str)


def entry_key(row: db.WaitlistEntry) -> tuple[datetime, str]:
    return (row.created_at, row.id)


async def add_entry(app: Booking, data: WaitlistEntryIn, *, scope: Scope) -> db.WaitlistEntry:
    """A client joins the waitlist (at the end of the line) of a location in scope."""
    async with app.uow.write() as session:
        location = await get_visible(session, db.Location, data.location_id, "location", scope)
        client = await get_visible(session, db.Client, data.client_id, "client", scope)
        treatment: db.Treatment = await get_or_404(
            session, db.Treatment, data.service_id, "service"
        )
        queries.check_offered(treatment)
        if data.therapist_id is not None:
            therapist = await get_visible(
                session, db.Therapist, data.therapist_id, "therapist", scope
            )
            if not therapist.active:
                raise domain.TherapistUnavailable(f"therapist {therapist.id} is no longer active")
            if treatment.modality not in therapist.modalities:
                raise domain.TherapistUnavailable(
                    f"therapist {therapist.id} does not offer {treatment.modality}"
                )
        now = app.clock()
        if data.latest < now.astimezone(zone(location.timezone)).date():
            raise InvalidRequest("latest", "the window is already over")
        entry = db.WaitlistEntry(
            id=new_id(),
            client_id=client.id,
            treatment_id=treatment.id,
            location_id=location.id,
            therapist_id=data.therapist_id,
            earliest=data.earliest,
            latest=data.latest,
            times_of_day=list(data.times_of_day),
            status=rules.WAITING,
            created_at=now,
            client=client,
        )
        session.add(entry)
        return entry


async def list_entries(
    app: Booking,
    *,
    location_id: str | None,
    status: str | None,
    page: PageRequest,
    scope: Scope,
) -> Sequence[db.WaitlistEntry]:
    """One page of the entries in scope in the order they joined (the order of offers)."""
    async with app.uow.read() as session:
        query = select(db.WaitlistEntry).where(visible(db.WaitlistEntry, scope))
        if location_id:
            query = query.where(db.WaitlistEntry.location_id == location_id)
        if status:
            query = query.where(db.WaitlistEntry.status == status)
        query = keyset(query, page, ENTRY_ORDER, ENTRY_KINDS)
        return (await session.scalars(query)).unique().all()


async def get_entry(app: Booking, entry_id: str, *, scope: Scope) -> db.WaitlistEntry:
    async with app.uow.read() as session:
        return await get_visible(session, db.WaitlistEntry, entry_id, "waitlist entry", scope)


async def remove_entry(app: Booking, entry_id: str, *, scope: Scope) -> None:
    """Take a waiting entry off the list; an open offer it holds lapses at once (and its
    slot passes to the next in line). A filled or removed entry stays as it is."""
    async with app.uow.write() as session:
        entry = await get_visible(session, db.WaitlistEntry, entry_id, "waitlist entry", scope)
        if entry.status != rules.WAITING:
            return
        entry.status, entry.ended_at = rules.REMOVED, app.clock()
        await _lapse_open_offers(session, app, entry.id)


async def _lapse_open_offers(session: AsyncSession, app: Booking, entry_id: str) -> None:
    open_offers = (
        await session.scalars(
            select(db.WaitlistOffer.id).where(
                db.WaitlistOffer.entry_id == entry_id, db.WaitlistOffer.status == rules.OPEN
            )
        )
    ).all()
    for offer_id in open_offers:
        await offers.lapse(session, app, offer_id)
