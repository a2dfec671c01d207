"""What the system does to tell partners by webhook (run by the dispatcher of
``services.referrals.delivery``): claim due deliveries with their signed-to-be Bundles,
then record each partner's answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals import db, domain, fhir
from services.referrals.domain import TaskStatus
from services.referrals.queries import held, history_of, hold, record_of
from services.referrals.usecases.context import SYSTEM, Referrals
from services.referrals.usecases.creating import PreparedWebhook
from services.referrals.usecases.lifecycle import apply, collect_events, write_events
from shared.logging import safe_error
from shared.secretbox import SecretUnavailable

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class OutgoingWebhook:
    delivery_id: str
    referral_id: str
    kind: str
    url: str
    secret: str
    body: bytes
    attempt: int


async def claim_due_deliveries(
    app: Referrals, limit: int, lease_seconds: float
) -> list[OutgoingWebhook]:
    """Take due deliveries and build their bodies; each is re-offered after ``lease_seconds``
    if this process dies before recording the answer (another replica then sends it)."""
    outgoing: list[OutgoingWebhook] = []
    # No wake-up after this commit: the dispatcher itself is the one claiming.
    async with app.uow.write() as session:
        now = app.clock()
        query = (
            select(db.Delivery)
            .where(db.Delivery.status == "pending", db.Delivery.next_attempt_at <= now)
            .order_by(db.Delivery.next_attempt_at)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        for delivery in (await session.scalars(query)).all():
            delivery.attempts += 1
            delivery.last_attempt_at = now
            delivery.next_attempt_at = now + timedelta(seconds=lease_seconds)
            referral = await session.get(db.Referral, delivery.referral_id)
            partner = await held(session, db.Partner, delivery.partner_id)
            if referral is None or partner is None or not partner.webhook_url:
                delivery.status = "superseded"
                continue
            try:
                record = await record_of(session, referral, details=False)
                record.history = await history_of(session, referral.id)
                body = fhir.to_bytes(
                    fhir.bundle(
                        record.snapshot(),
                        bundle_id=delivery.id,
                        timestamp=now,
                        clinic_name=app.clinic_name,
                        base_url=app.base_url,
                    )
                )
                secret = app.secretbox.decrypt(partner.webhook_secret_sealed)
            except (SecretUnavailable, ValueError) as exc:
                delivery.status = "failed"
                delivery.last_error = f"cannot build the webhook: {exc}"[:500]
                log.error("webhook.unbuildable", delivery_id=delivery.id, error=safe_error(exc))
                continue
            outgoing.append(
                OutgoingWebhook(
                    delivery_id=delivery.id,
                    referral_id=referral.id,
                    kind=delivery.kind,
                    url=partner.webhook_url,
                    secret=secret,
                    body=body,
                    attempt=delivery.attempts,
                )
            )
    return outgoing


def prepared_webhook(app: Referrals, prepared: PreparedWebhook) -> OutgoingWebhook:
    """The signed-to-be body of a delivery a use case wrote claimed (``creating``)."""
    body = fhir.to_bytes(
        fhir.bundle(
            prepared.snapshot,
            bundle_id=prepared.delivery_id,
            timestamp=app.clock(),
            clinic_name=app.clinic_name,
            base_url=app.base_url,
        )
    )
    return OutgoingWebhook(
        delivery_id=prepared.delivery_id,
        referral_id=prepared.referral_id,
        kind=prepared.kind,
        url=prepared.url,
        secret=app.secretbox.decrypt(prepared.secret_sealed),
        body=body,
        attempt=prepared.attempt,
    )


@dataclass(frozen=True)
class Answer:
    """What a partner's webhook answered to one attempt."""

    delivery_id: str
    ok: bool
    status_code: int | None
    error: str | None


async def record_deliveries(
    app: Referrals, answers: Sequence[Answer], retry_delay: Callable[[int], float]
) -> None:
    """Partners' answers, in one transaction: each delivered, retried later, or failed.

    Two reads whatever the batch's size: the referrals with their partners and clients
    (the referrals locked on PostgreSQL, in id order, before their deliveries: the order
    every other writer locks them in), then the deliveries; then the changes and the
    events together.
    """
    ids = [a.delivery_id for a in answers]
    async with app.uow.write() as session:
        lock = session.get_bind().dialect.name == "postgresql"
        referral_ids = select(db.Delivery.referral_id).where(db.Delivery.id.in_(ids))
        of_referrals = (
            select(db.Referral, db.Partner, db.Client)
            .join(db.Partner, db.Partner.id == db.Referral.partner_id)
            .outerjoin(db.Client, db.Client.id == db.Referral.client_id)
            .where(db.Referral.id.in_(referral_ids))
            .order_by(db.Referral.id)
        )
        if lock:
            of_referrals = of_referrals.with_for_update(of=db.Referral)
        referrals: dict[str, db.Referral] = {}
        for referral, partner, client in (await session.execute(of_referrals)).all():
            referrals[referral.id] = referral
            hold(session, db.Partner, referral.partner_id, partner)
            hold(session, db.Client, referral.client_id, client)
        of_deliveries = select(db.Delivery).where(db.Delivery.id.in_(ids)).order_by(db.Delivery.id)
        deliveries = {d.id: d for d in (await session.scalars(_locked(of_deliveries, lock))).all()}
        collect_events(session)
        now = app.clock()
        for answer in answers:
            delivery = deliveries.get(answer.delivery_id)
            if delivery is None or delivery.status != "pending":
                continue
            referral = referrals[delivery.referral_id]
            await _record(session, app, referral, delivery, answer, now, retry_delay)
        await write_events(session)


def _locked(query: Select[Any], lock: bool) -> Select[Any]:
    return query.with_for_update() if lock else query


async def _record(
    session: AsyncSession,
    app: Referrals,
    referral: db.Referral,
    delivery: db.Delivery,
    answer: Answer,
    now: datetime,
    retry_delay: Callable[[int], float],
) -> None:
    status_code, error = answer.status_code, answer.error
    delivery.last_status_code = status_code
    delivery.last_error = error[:500] if error else None
    if answer.ok:
        delivery.status = "delivered"
        delivery.delivered_at = now
        if delivery.kind == "requested" and referral.task_status == TaskStatus.REQUESTED:
            await apply(
                session, app, referral, "receive", actor=SYSTEM, updates={"received_at": now}
            )
        return
    retry_at = domain.next_attempt_at(now, delivery.deadline_at, retry_delay(delivery.attempts))
    if retry_at is not None:
        delivery.next_attempt_at = retry_at
        return
    delivery.status = "failed"
    log.warning(
        "webhook.failed",
        delivery_id=delivery.id,
        attempts=delivery.attempts,
        kind=delivery.kind,
    )
    if delivery.kind == "requested" and referral.task_status == TaskStatus.REQUESTED:
        reason = (
            f"webhook not delivered after {delivery.attempts} attempts in "
            f"{app.webhook_retry_hours:g} h (last: {status_code or error})"
        )
        await apply(session, app, referral, "fail", actor=SYSTEM, note=reason, status_reason=reason)
