"""What the HTTP API reads: the rules, the message log, and the pages behind signed links."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select

from services.reminders import db
from services.reminders.context import Reminders
from services.reminders.facts import client_location
from services.reminders.rules import RulesDocument, load_rules
from shared.auth import Scope
from shared.errors import NotFound
from shared.pagination import PageRequest, keyset


async def get_rules(app: Reminders) -> RulesDocument:
    async with app.uow.read() as session:
        return await load_rules(session, app.settings)


async def list_messages(
    app: Reminders,
    *,
    session_id: str | None,
    phone: str | None,
    scope: Scope,
    page: PageRequest,
) -> Sequence[db.Message]:
    """A page of the messages within ``scope``, newest first by ``(created_at, id)``, plus
    one past it (``shared.pagination``). Each carries the location of its session, as
    booking's events told it (a message of no known location is the admins' only)."""
    async with app.uow.read() as session:
        query = select(db.Message).where(scope.where(db.Message.location_id))
        if session_id:
            query = query.where(db.Message.session_id == session_id)
        if phone:
            query = query.where(db.Message.phone == phone)
        order = (db.Message.created_at, db.Message.id)
        query = keyset(query, page, order, (datetime, str), descending=True)
        return (await session.scalars(query)).all()


def message_key(row: db.Message) -> tuple[datetime, str]:
    return (row.created_at, row.id)


async def session_for_page(app: Reminders, session_id: str) -> db.Session:
    async with app.uow.read() as session:
        row = await session.get(db.Session, session_id)
        if row is None:
            raise NotFound("session", session_id)
        return row


async def referral_for_page(app: Reminders, referral_id: str) -> tuple[db.ReferralNotice, str, str]:
    """The latest update we have for the referral, and whom the client may call: the
    location of their latest session, else the clinic of the settings."""
    async with app.uow.read() as session:
        notice = (
            await session.scalars(
                select(db.ReferralNotice)
                .where(db.ReferralNotice.referral_id == referral_id)
                .order_by(db.ReferralNotice.happened_at.desc())
                .limit(1)
            )
        ).first()
        if notice is None:
            raise NotFound("referral", referral_id)
        _, name, phone, _ = await client_location(session, notice.client_id)
    return notice, name or app.settings.clinic_name, phone or app.settings.clinic_phone
