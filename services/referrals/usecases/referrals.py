"""What clinic staff do with referrals: create one (sent at once, or when booking tells us
who the client is) and cancel one."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from services.referrals import db, scope
from services.referrals.codes import DiagnosisCode, InvalidDiagnosisCode
from services.referrals.domain import (
    ConsentRequired,
    DiagnosisCodeRefused,
    DisciplineNotInPlan,
    PlanNotActive,
    ReferralAlreadyLive,
    TaskStatus,
    UnknownPartner,
    UnknownPlan,
)
from services.referrals.queries import held
from services.referrals.schemas import ReferralIn
from services.referrals.usecases import creating
from services.referrals.usecases.context import Referrals
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
    outside the caller's locations is unknown. (Core statements: ``creating``.)"""
    if not data.consent_to_share:
        raise ConsentRequired()
    codes = _check_codes(app, data.diagnosis_codes)
    try:
        async with app.uow.write() as session:
            facts = await creating.read_facts(session, data.plan_id, data.partner_id)
            head = facts[0] if facts else None
            if head is None or not within.allows(head.location_id):
                raise UnknownPlan(data.plan_id)
            if head.partner_id is None:
                raise UnknownPartner("partner_id", data.partner_id)
            if head.status != "active":
                raise PlanNotActive(head.id, head.status)
            discipline = head.partner_discipline
            if not any(f.component_discipline == discipline for f in facts):
                have = [f.component_discipline for f in facts if f.component_id is not None]
                raise DisciplineNotInPlan(head.partner_id, discipline, head.id, have)
            if head.live_id is not None:
                raise ReferralAlreadyLive(head.partner_id, head.live_id, discipline)
            created = await creating.insert_referral(
                session,
                app,
                facts,
                reason=data.reason,
                codes=codes,
                urgency=data.urgency,
                actor=actor,
            )
    except IntegrityError as exc:
        # Two concurrent requests on PostgreSQL: the partial unique index decided.
        raise ReferralAlreadyLive() from exc
    return created


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
