"""What clinic staff do with referrals: create one (sent at once, or when booking tells us
who the client is) and cancel one."""

from __future__ import annotations

from services.referrals import db, scope
from services.referrals.codes import DiagnosisCode, InvalidDiagnosisCode
from services.referrals.domain import (
    ConsentRequired,
    DiagnosisCodeRefused,
    TaskStatus,
)
from services.referrals.queries import held
from services.referrals.schemas import ReferralIn
from services.referrals.usecases import creating
from services.referrals.usecases.context import Referrals
from services.referrals.usecases.create_queue import CreateRequest, create_alone
from services.referrals.usecases.lifecycle import (
    apply,
    lock_referral,
    queue_delivery,
    supersede_deliveries,
)
from shared.auth import Scope
from shared.errors import NotFound


def _check_codes(app: Referrals, raw: list[str]) -> list[DiagnosisCode]:
    try:
        return app.codes.check_all(raw)
    except InvalidDiagnosisCode as exc:
        raise DiagnosisCodeRefused(str(exc)) from exc


async def create_referral(
    app: Referrals, data: ReferralIn, actor: str, *, within: Scope
) -> creating.Created:
    """A referral for the partner's discipline of a plan; sent at once if the client's
    details are known, otherwise it waits (draft) for ``booking.client.*``. A plan
    outside the caller's locations is unknown. Written with the creates that arrive
    alongside (``create_queue``), in Core statements (``creating``)."""
    if not data.consent_to_share:
        raise ConsentRequired()
    request = CreateRequest(data, _check_codes(app, data.diagnosis_codes), actor, within)
    if app.creates is None:
        return await create_alone(app, request)
    return await app.creates.create(app, request)


async def cancel_referral(
    app: Referrals, referral_id: str, reason: str, actor: str, *, within: Scope
) -> None:
    async with app.uow.write() as session:
        row = await lock_referral(session, referral_id)
        plan = await held(session, db.Plan, row.plan_id)
        if plan is None or not scope.reaches_plan(within, plan):
            raise NotFound("referral", referral_id)
        was_sent = row.task_status != TaskStatus.DRAFT
        await apply(session, app, row, "cancel", actor=actor, note=reason, status_reason=reason)
        await supersede_deliveries(session, row.id)
        if was_sent:
            await queue_delivery(session, app, row, "cancelled")
