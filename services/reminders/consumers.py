"""What booking's and referrals' events tell reminders: sessions and clients remembered as
the events describe them, referral updates to text about. Each change is marked for
planning and the planner is woken once the consumer's transaction commits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.reminders import db
from services.reminders.context import PLANNER
from services.reminders.domain import ClientUnknown
from services.reminders.questions import close_offer_questions
from services.reminders.settings import RemindersSettings
from shared import events
from shared.auth import remember_key
from shared.consumers import Consumer
from shared.timeutil import as_utc
from shared.uow import after_commit

log = structlog.get_logger(__name__)

#: The referral statuses the client hears about.
REFERRAL_UPDATES = frozenset({"accepted", "scheduled"})
#: Events fetched, and applied in one transaction, at once by the sessions and clients
#: consumers.
CONSUMER_BATCH = 64
#: ``session.info`` key: the (model, id) pairs a batch's prepare found absent.
_ABSENT = "reminders.absent"


async def prepare_batch(session: AsyncSession, batch: Sequence[events.CloudEvent[Any]]) -> None:
    """Load the clients and sessions a batch of events names, one query per table, so each
    handler finds its rows in the session (and knows, without asking, which are new)."""
    client_ids: set[str] = set()
    session_ids: set[str] = set()
    for event in batch:
        data = event.data
        if isinstance(data, events.SessionEvent):
            client_ids.add(data.client.id)
            session_ids.add(data.session_id)
        elif isinstance(data, events.ClientEvent):
            client_ids.add(data.client.id)
    absent: set[tuple[type, str]] = set()
    if client_ids:
        clients = await session.scalars(select(db.Client).where(db.Client.id.in_(client_ids)))
        absent.update((db.Client, key) for key in client_ids - {row.id for row in clients})
    if session_ids:
        rows = await session.scalars(select(db.Session).where(db.Session.id.in_(session_ids)))
        absent.update((db.Session, key) for key in session_ids - {row.id for row in rows})
    session.info[_ABSENT] = absent


async def _row(session: AsyncSession, model: type[Any], key: str) -> Any:
    """``session.get``, minus the query for a row the batch's prepare found absent."""
    if (model, key) in session.info.get(_ABSENT, ()):
        return None
    return await session.get(model, key)


def _added(session: AsyncSession, row: Any) -> None:
    session.add(row)
    session.info.get(_ABSENT, set()).discard((type(row), row.id))


async def _learn_client(
    session: AsyncSession,
    client_id: str,
    first_name: str,
    phone: str,
    consent: bool,
    at: datetime,
    language: str | None = None,
) -> None:
    """Keep the newest facts; a language only from an event that carries one (booking's
    client events do not), so such an event never erases it."""
    row = await _row(session, db.Client, client_id)
    if row is None:
        _added(
            session,
            db.Client(
                id=client_id,
                first_name=first_name,
                phone=phone,
                sms_consent=consent,
                language=language,
                as_of=at,
            ),
        )
    elif row.as_of <= at:
        row.first_name, row.phone, row.sms_consent, row.as_of = first_name, phone, consent, at
        if language is not None:
            row.language = language


async def apply_session_event(
    session: AsyncSession, event: events.CloudEvent[events.SessionEvent]
) -> None:
    """Remember the session as the event describes it and mark it for (re)planning."""
    data = event.data
    at = as_utc(event.time)
    client = data.client
    await _learn_client(
        session, client.id, client.first_name, client.phone, client.sms_consent, at, client.language
    )
    row = await _row(session, db.Session, data.session_id)
    if row is not None and data.version <= row.version:
        log.info("session.stale_event", session=data.session_id, version=data.version)
        return
    if row is None:
        row = db.Session(id=data.session_id, change_seq=0, planned_seq=0, planned_jobs=[])
        _added(session, row)
    row.client_id = client.id
    row.version = data.version
    row.status = data.status
    row.start_at = as_utc(data.start)
    row.end_at = as_utc(data.end)
    row.location_id = data.location.id
    row.location_name = data.location.name
    row.location_timezone = data.location.timezone
    row.location_phone = data.location.phone
    row.modality = data.service.modality
    row.manage_url = data.manage_url
    row.updated_at = at
    if event.type == events.SESSION_BOOKED:
        row.booked_at = at
        row.changed_at = at
    elif event.type == events.SESSION_RESCHEDULED:
        row.rescheduled_at = at
        row.rescheduled_version = data.version
        row.changed_at = at
    elif event.type == events.SESSION_CANCELLED:
        row.cancelled_at = at
    elif event.type == events.SESSION_COMPLETED:
        row.completed_at = at
    row.change_seq = (row.change_seq or 0) + 1
    row.plan_pending = True
    after_commit(session, PLANNER)


async def apply_client_event(
    session: AsyncSession, event: events.CloudEvent[events.ClientEvent]
) -> None:
    c = event.data.client
    await _learn_client(session, c.id, c.first_name, c.phone, c.sms_consent, as_utc(event.time))
    after_commit(session, PLANNER)


async def apply_referral_event(
    session: AsyncSession, event: events.CloudEvent[events.ReferralEvent]
) -> None:
    """An accepted or scheduled referral becomes a text to plan for its client."""
    data = event.data
    status = event.type.rsplit(".", 1)[-1]
    if status not in REFERRAL_UPDATES:
        return
    notice_id = f"{data.referral_id}:{status}"
    if await session.get(db.ReferralNotice, notice_id) is not None:
        return
    if await session.get(db.Client, data.client_id) is None:
        raise ClientUnknown(f"client {data.client_id} of referral {data.referral_id} is unknown")
    session.add(
        db.ReferralNotice(
            id=notice_id,
            referral_id=data.referral_id,
            client_id=data.client_id,
            status=status,
            discipline=data.partner.discipline,
            happened_at=as_utc(event.time),
            plan_pending=True,
        )
    )
    after_commit(session, PLANNER)


async def apply_key_event(
    session: AsyncSession, event: events.CloudEvent[events.ApiKeyEvent]
) -> None:
    """A key issued or revoked at booking: the Authenticator reads it from our table."""
    await remember_key(session, event.data)


async def apply_location_event(
    session: AsyncSession, event: events.CloudEvent[events.LocationEvent]
) -> None:
    """A location renamed or given a new phone: every text not yet sent names it as it is
    now (texts are written when they are sent, from the session rows updated here)."""
    data = event.data
    await session.execute(
        update(db.Session)
        .where(db.Session.location_id == data.id)
        .values(location_name=data.name, location_phone=data.phone, location_timezone=data.timezone)
    )


async def apply_waitlist_event(
    session: AsyncSession, event: events.CloudEvent[events.WaitlistEvent]
) -> None:
    """An offer to text (``offered``), or one that closed: ``taken`` also tells its client
    the time is gone; ``filled`` and ``expired`` only close the question it asked."""
    data = event.data
    at = as_utc(event.time)
    client = data.client
    what = event.type.rsplit(".", 1)[-1]
    await _learn_client(
        session, client.id, client.first_name, client.phone, client.sms_consent, at, client.language
    )
    row = await session.get(db.WaitlistOffer, data.offer_id)
    if row is None:
        slot = data.slot
        row = db.WaitlistOffer(
            id=data.offer_id,
            entry_id=data.entry_id,
            client_id=client.id,
            slot_start=as_utc(slot.start),
            slot_end=as_utc(slot.end),
            location_id=slot.location.id,
            location_name=slot.location.name,
            location_timezone=slot.location.timezone,
            location_phone=slot.location.phone,
            offered_at=at,
            expires_at=as_utc(data.expires_at),
            status="offered",
            pending=[],
            change_seq=0,
            plan_pending=False,
        )
        session.add(row)
    row.change_seq = (row.change_seq or 0) + 1
    if what == "offered":
        if row.closed_at is None:  # a replay re-plans it; the ledger key sends it once
            row.pending = sorted({*(row.pending or []), "offer"})
            row.plan_pending = True
    elif row.closed_at is None:
        row.status, row.closed_at = what, at
        await close_offer_questions(session, data.offer_id, at)
        if what == "taken":
            row.pending = sorted({*(row.pending or []), "taken"})
            row.plan_pending = True
    if row.plan_pending:
        after_commit(session, PLANNER)


def build_consumers(settings: RemindersSettings) -> list[Consumer]:
    common: dict[str, Any] = {
        "service": "reminders",
        "max_deliver": settings.max_deliver,
        "retry_base_seconds": settings.retry_base_seconds,
        # A fetch's events share one transaction: a larger batch, fewer commits.
        "batch_size": CONSUMER_BATCH,
    }
    return [
        Consumer(
            purpose="sessions",
            stream=events.BOOKING_STREAM,
            subject="booking.session.>",
            handler=apply_session_event,
            prepare=prepare_batch,
            **common,
        ),
        Consumer(
            purpose="clients",
            stream=events.BOOKING_STREAM,
            subject="booking.client.>",
            handler=apply_client_event,
            prepare=prepare_batch,
            **common,
        ),
        Consumer(
            purpose="referrals",
            stream=events.REFERRALS_STREAM,
            subject="referrals.referral.>",
            handler=apply_referral_event,
            **common,
        ),
        Consumer.of(
            events.REMINDERS_LOCATIONS,
            apply_location_event,
            max_deliver=settings.max_deliver,
            retry_base_seconds=settings.retry_base_seconds,
        ),
        Consumer.of(
            events.REMINDERS_WAITLIST,
            apply_waitlist_event,
            max_deliver=settings.max_deliver,
            retry_base_seconds=settings.retry_base_seconds,
        ),
        Consumer.of(
            events.REMINDERS_APIKEYS,
            apply_key_event,
            max_deliver=settings.max_deliver,
            retry_base_seconds=settings.retry_base_seconds,
        ),
    ]
