"""What the clinic's admin does: register partners, issue API keys."""

from __future__ import annotations

from services.referrals import db
from services.referrals.domain import WebhookMustBeHttps
from services.referrals.schemas import PartnerIn
from services.referrals.signing import new_webhook_secret
from services.referrals.usecases.context import Referrals
from shared.auth import Role, create_key
from shared.errors import InvalidRequest
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


async def issue_api_key(
    app: Referrals, name: str, role: Role, location_ids: list[str]
) -> tuple[str, str]:
    """A clinic key (admin, or front desk for some locations) for this service; shown once."""
    key_id = new_id()
    async with app.uow.write() as session:
        key = await create_key(
            session, key_id=key_id, name=name, role=role, location_ids=location_ids
        )
    return key_id, key
