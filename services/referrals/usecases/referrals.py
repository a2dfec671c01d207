"""What clinic staff do with referrals: create one (sent at once, or when booking tells us
who the client is) and cancel one."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.referrals import db, domain, scope
from services.referrals.codes import DiagnosisCode, InvalidDiagnosisCode
from services.referrals.domain import (
    BusinessStatus,
    ConsentRequired,
    DiagnosisCodeRefused,
    DisciplineNotInPlan,
    PlanNotActive,
    ReferralAlreadyLive,
    TaskStatus,
    UnknownPartner,
    UnknownPlan,
)
from services.referrals.queries import ReferralRecord, held, record_of
from services.referrals.schemas import ReferralIn
from services.referrals.usecases.context import Referrals
from services.referrals.usecases.lifecycle import (
    announce,
    apply,
    issue,
    lock_plan,
    lock_referral,
    queue_delivery,
    record_history,
    supersede_deliveries,
)
from shared.auth import Scope
from shared.errors import NotFound
from shared.ids import new_id


def _check_codes(app: Referrals, raw: list[str]) -> list[DiagnosisCode]:
    try:
        return app.codes.check_all(raw)
    except InvalidDiagnosisCode as exc:
        raise DiagnosisCodeRefused(str(exc)) from exc


async def create_referral(
    app: Referrals, data: ReferralIn, actor: str, *, within: Scope
) -> ReferralRecord:
    """A referral for the partner's discipline of a plan; sent at once if the client's
    details are known, otherwise it waits (draft) for ``booking.client.*``. A plan
    outside the caller's locations is unknown."""
    if not data.consent_to_share:
        raise ConsentRequired()
    codes = _check_codes(app, data.diagnosis_codes)
    try:
        async with app.uow.write() as session:
            plan = await lock_plan(session, data.plan_id)
            if plan is None or not scope.reaches_plan(within, plan):
                raise UnknownPlan(data.plan_id)
            partner = await held(session, db.Partner, data.partner_id)
            if partner is None:
                raise UnknownPartner("partner_id", data.partner_id)
            if plan.status != "active":
                raise PlanNotActive(plan.id, plan.status)
            component = next(
                (c for c in plan.components if c.discipline == partner.discipline), None
            )
            if component is None:
                have = [c.discipline for c in plan.components]
                raise DisciplineNotInPlan(partner.id, partner.discipline, plan.id, have)
            live = await session.scalar(
                select(db.Referral.id).where(
                    db.Referral.plan_id == plan.id,
                    db.Referral.partner_id == partner.id,
                    db.Referral.discipline == partner.discipline,
                    db.Referral.task_status.in_([s.value for s in domain.LIVE]),
                )
            )
            if live is not None:
                raise ReferralAlreadyLive(partner.id, live, partner.discipline)
            component.partner_id = partner.id
            now = app.clock()
            row = db.Referral(
                id=new_id(),
                plan_id=plan.id,
                partner_id=partner.id,
                client_id=plan.client_id,
                discipline=partner.discipline,
                reason=data.reason,
                diagnosis_codes=[{"code": c.code, "description": c.description} for c in codes],
                urgency=data.urgency,
                consent_to_share=True,
                consent_recorded_at=now,
                task_status=TaskStatus.DRAFT.value,
                status="created",
                business_status=BusinessStatus.AWAITING_CLIENT_DETAILS.value,
                deadlines_scheduled=False,
                version=1,
                created_by=actor,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            record_history(session, row, "create", actor=actor, at=now)
            await session.flush()
            await announce(session, row)
            if await held(session, db.Client, plan.client_id) is not None:
                await issue(session, app, row, actor)
            return await record_of(session, row)
    except IntegrityError as exc:
        # Two concurrent requests on PostgreSQL: the partial unique index decided.
        raise ReferralAlreadyLive() from exc


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
