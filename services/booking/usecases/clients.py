"""The front desk keeps client records; every change is announced (``booking.client.*``)
so reminders knows the phone and the consent."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.booking import db
from services.booking.schemas import ClientIn, ClientPatch
from services.booking.scope import get_visible
from services.booking.usecases import SOURCE, Booking
from shared import events
from shared.auth import Scope
from shared.ids import new_id
from shared.outbox import enqueue
from shared.phones import normalize_phone


def client_details(client: db.Client) -> events.ClientDetails:
    return events.ClientDetails(
        id=client.id,
        first_name=client.first_name,
        last_name=client.last_name,
        date_of_birth=client.date_of_birth,
        phone=client.phone,
        email=client.email,
        sms_consent=client.sms_consent,
    )


def client_ref(client: db.Client) -> events.ClientRef:
    """The client as a text needs them (session and waitlist events)."""
    return events.ClientRef(
        id=client.id,
        first_name=client.first_name,
        phone=client.phone,
        sms_consent=client.sms_consent,
        language=client.language,
    )


async def announce_client(session: AsyncSession, client: db.Client, event_type: str) -> None:
    await enqueue(
        session,
        events.make_event(
            event_type, SOURCE, events.ClientEvent(client=client_details(client)), subject=client.id
        ),
    )


async def _check_home(session: AsyncSession, scope: Scope, location_id: str | None) -> None:
    if location_id is not None:
        await get_visible(session, db.Location, location_id, "location", scope)


async def create_client(app: Booking, data: ClientIn, *, scope: Scope) -> db.Client:
    phone = normalize_phone(data.phone, app.default_phone_region)
    now = app.clock()
    home = scope.location_for(data.home_location_id, "home_location_id")
    async with app.uow.write() as session:
        await _check_home(session, scope, home)
        client = db.Client(
            id=new_id(),
            first_name=data.first_name,
            last_name=data.last_name,
            phone=phone,
            email=str(data.email) if data.email else None,
            date_of_birth=data.date_of_birth,
            sms_consent=data.sms_consent,
            sms_consent_at=now if data.sms_consent else None,
            sms_consent_source=data.sms_consent_source if data.sms_consent else None,
            home_location_id=home,
            language=data.language,
            created_at=now,
            updated_at=now,
        )
        session.add(client)
        await session.flush()
        await announce_client(session, client, events.CLIENT_CREATED)
        return client


def set_consent(client: db.Client, consent: bool, source: str, now: datetime) -> None:
    if client.sms_consent != consent:
        client.sms_consent = consent
        client.sms_consent_at = now
        client.sms_consent_source = source


async def update_client(
    app: Booking, client_id: str, data: ClientPatch, *, scope: Scope
) -> db.Client:
    now = app.clock()
    async with app.uow.write() as session:
        client = await get_visible(session, db.Client, client_id, "client", scope)
        changes = data.model_dump(exclude_unset=True, exclude={"sms_consent", "sms_consent_source"})
        if "home_location_id" in changes:
            await _check_home(session, scope, changes["home_location_id"])
        if "phone" in changes and changes["phone"] is not None:
            changes["phone"] = normalize_phone(changes["phone"], app.default_phone_region)
        if "language" in changes and changes["language"] is None:
            del changes["language"]  # null keeps the language; there is always one
        if "email" in changes and changes["email"] is not None:
            changes["email"] = str(changes["email"])
        for key, value in changes.items():
            setattr(client, key, value)
        if data.sms_consent is not None:
            set_consent(client, data.sms_consent, data.sms_consent_source, now)
        client.updated_at = now
        await announce_client(session, client, events.CLIENT_UPDATED)
        return client
