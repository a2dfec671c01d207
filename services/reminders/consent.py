"""Consent to texts: the front desk's record, and the phone's own say (STOP, START)."""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from services.reminders import db, domain
from shared import events
from shared.outbox import enqueue

log = structlog.get_logger(__name__)


async def consent_of(session: AsyncSession, client: db.Client | None) -> domain.Consent:
    """:func:`consent_from` the client's record and its phone's, as stored now."""
    if client is None or not client.phone:
        return "no_phone"
    return consent_from(client, await session.get(db.PhoneConsent, client.phone))


def consent_from(client: db.Client | None, phone: db.PhoneConsent | None) -> domain.Consent:
    """No text without consent: the phone's own STOP beats everything; a START after the
    front desk's record counts as consent. ``phone`` is the row of the client's phone."""
    if client is None or not client.phone:
        return "no_phone"
    if phone is not None and not phone.sms_consent:
        return "opted_out"
    if client.sms_consent:
        return "ok"
    if phone is not None and phone.sms_consent and phone.changed_at >= client.as_of:
        return "ok"
    return "no_consent"


async def set_consent(
    session: AsyncSession, phone: str, consent: bool, source: str, now: datetime
) -> bool:
    """Store a phone's consent; announce it when it changed. Returns whether it did."""
    row = await session.get(db.PhoneConsent, phone)
    if row is not None and row.sms_consent == consent:
        return False
    if row is None:
        session.add(
            db.PhoneConsent(phone=phone, sms_consent=consent, source=source, changed_at=now)
        )
    else:
        row.sms_consent, row.source, row.changed_at = consent, source, now
    await enqueue(
        session,
        events.make_event(
            events.CONSENT_CHANGED,
            domain.SOURCE,
            events.ConsentChanged(phone=phone, sms_consent=consent, source=source),
        ),
    )
    log.info("consent.changed", phone=phone, sms_consent=consent, source=source)
    return True
