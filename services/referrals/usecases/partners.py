"""What the clinic's admin does: register partners, and rotate a partner's API key or
webhook secret (the new value is shown once, the old one ends at once). The clinic's own
keys are issued by booking and learnt from its events (``shared.auth.remember_key``)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals import db
from services.referrals.domain import WebhookMustBeHttps
from services.referrals.schemas import PartnerIn
from services.referrals.signing import new_webhook_secret
from services.referrals.usecases.context import Referrals
from shared.auth import create_key, revoke_key
from shared.errors import InvalidRequest, NotFound
from shared.ids import new_id
from shared.outbound import OutboundRefused
from shared.phones import normalize_phone


async def create_partner(app: Referrals, data: PartnerIn) -> tuple[db.Partner, str, str]:
    """A partner, its API key and its webhook secret (the two are returned this once)."""
    phone = normalize_phone(data.phone, app.default_phone_region)
    webhook_url = str(data.webhook_url) if data.webhook_url else None
    if webhook_url and app.production and not webhook_url.startswith("https://"):
        raise WebhookMustBeHttps()
    if webhook_url:
        try:
            await app.outbound.acheck(webhook_url)
        except OutboundRefused as exc:
            raise InvalidRequest("webhook_url", str(exc)) from exc
    secret = new_webhook_secret()
    async with app.uow.write() as session:
        partner_id = new_id()
        key_id = new_id()
        api_key = await create_key(
            session,
            key_id=key_id,
            name=f"partner {data.name}"[:200],
            role="partner",
            partner_id=partner_id,
        )
        partner = db.Partner(
            id=partner_id,
            name=data.name,
            discipline=data.discipline,
            phone=phone,
            email=str(data.email),
            location_ids=list(data.location_ids),
            webhook_url=webhook_url,
            webhook_secret_sealed=app.secretbox.encrypt(secret),
            api_key_id=key_id,
            created_at=app.clock(),
        )
        session.add(partner)
    return partner, api_key, secret


async def _locked_partner(session: AsyncSession, partner_id: str) -> db.Partner:
    partner = (
        await session.scalars(
            select(db.Partner).where(db.Partner.id == partner_id).with_for_update()
        )
    ).first()
    if partner is None:
        raise NotFound("partner", partner_id)
    return partner


async def rotate_key(app: Referrals, partner_id: str) -> str:
    """A new API key for the partner; the old one is refused from this commit on."""
    async with app.uow.write() as session:
        partner = await _locked_partner(session, partner_id)
        await revoke_key(session, partner.api_key_id, app.clock())
        key_id = new_id()
        api_key = await create_key(
            session,
            key_id=key_id,
            name=f"partner {partner.name}"[:200],
            role="partner",
            partner_id=partner.id,
        )
        partner.api_key_id = key_id
    return api_key


async def rotate_webhook_secret(app: Referrals, partner_id: str) -> str:
    """A new webhook secret; every webhook signed from this commit on uses it, the old one
    signs nothing more."""
    secret = new_webhook_secret()
    async with app.uow.write() as session:
        partner = await _locked_partner(session, partner_id)
        partner.webhook_secret_sealed = app.secretbox.encrypt(secret)
    return secret
