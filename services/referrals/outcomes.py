"""Reading the check-in pain scores for the FHIR Observation views, and who sees which.

A score belongs to the plan it was recorded toward (``usecases.from_reminders``). The clinic
sees the scores of its locations' plans (an admin: all of them, also those recorded while the
client had no plan; a front desk: also those, for a client it reaches); a partner sees the
scores of the plans it has a referral in (sent, not draft), as its webhook Bundle does.
Anything else is simply not found: a search answers an empty Bundle, a read 404.
"""

from __future__ import annotations

from sqlalchemy import and_, false, or_, select, true
from sqlalchemy.sql.elements import ColumnElement

from services.referrals import db, scope
from services.referrals.domain import TaskStatus
from services.referrals.observations import PainScore
from services.referrals.queries import pain_score
from services.referrals.usecases.context import Referrals
from shared.auth import Principal, Scope
from shared.errors import NotFound


def visible_to(caller: Principal) -> ColumnElement[bool]:
    """The condition on ``outcomes`` rows that ``caller`` may see."""
    if caller.role == "partner" and caller.partner_id is not None:
        return db.Outcome.plan_id.in_(
            select(db.Referral.plan_id).where(
                db.Referral.partner_id == caller.partner_id,
                db.Referral.task_status != TaskStatus.DRAFT.value,
            )
        )
    if caller.role not in ("admin", "front_desk"):
        return false()
    within = Scope.of(caller)
    if within.everything:
        return true()
    return or_(
        db.Outcome.plan_id.in_(select(db.Plan.id).where(scope.plans(within))),
        and_(
            db.Outcome.plan_id.is_(None),
            db.Outcome.client_id.in_(select(db.Plan.client_id).where(scope.plans(within))),
        ),
    )


async def pain_scores_of(app: Referrals, client_id: str, caller: Principal) -> list[PainScore]:
    """The client's scores ``caller`` may see, oldest first."""
    async with app.uow.read() as session:
        rows = await session.scalars(
            select(db.Outcome)
            .where(db.Outcome.client_id == client_id, visible_to(caller))
            .order_by(db.Outcome.answered_at, db.Outcome.id)
        )
        return [pain_score(r) for r in rows.all()]


async def pain_score_by_id(app: Referrals, observation_id: str, caller: Principal) -> PainScore:
    async with app.uow.read() as session:
        row = await session.scalar(
            select(db.Outcome).where(db.Outcome.id == observation_id, visible_to(caller))
        )
        if row is None:
            raise NotFound("observation", observation_id)
        return pain_score(row)
