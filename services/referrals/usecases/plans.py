"""What clinic staff do with care plans: create one (its progress then moves with booking's
sessions and the partners' reports)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from services.referrals import db, domain
from services.referrals.domain import MassageTakesNoPartner, UnknownPartner, WrongDiscipline
from services.referrals.schemas import ComponentIn, PlanIn
from services.referrals.usecases.context import Referrals
from services.referrals.usecases.lifecycle import announce_new_plan
from shared.auth import Scope
from shared.ids import new_id


async def _check_component_partner(
    session: AsyncSession, index: int, component: ComponentIn
) -> None:
    if component.partner_id is None:
        return
    where = f"components[{index}].partner_id"
    if component.discipline == domain.MASSAGE:
        raise MassageTakesNoPartner(where)
    partner = await session.get(db.Partner, component.partner_id)
    if partner is None:
        raise UnknownPartner(where, component.partner_id)
    if partner.discipline != component.discipline:
        raise WrongDiscipline(where, partner.id, partner.discipline, component.discipline)


async def create_plan(app: Referrals, data: PlanIn, *, within: Scope) -> db.Plan:
    """A plan at one of the caller's locations (another location is not found)."""
    location_id = within.location_for(data.location_id, "location_id")
    async with app.uow.write() as session:
        for index, component in enumerate(data.components):
            await _check_component_partner(session, index, component)
        now = app.clock()
        plan = db.Plan(
            id=new_id(),
            client_id=data.client_id,
            location_id=location_id,
            goals=data.goals,
            baseline_pain_score=data.baseline_pain_score,
            status="active",
            version=1,
            created_at=now,
            updated_at=now,
            components=[
                db.PlanComponent(
                    position=i,
                    discipline=c.discipline,
                    sessions=c.sessions,
                    per_week=c.per_week,
                    partner_id=c.partner_id,
                    completed_sessions=0,
                    no_shows=0,
                )
                for i, c in enumerate(data.components)
            ],
        )
        session.add(plan)
        await session.flush()
        set_committed_value(plan, "outcomes", [])  # a new plan has none yet: no query
        await announce_new_plan(session, plan)
        return plan
