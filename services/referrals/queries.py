"""Reading referrals, plans, partners and clients: what the views and the FHIR resources
show, and who may see what. Nothing here writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import String, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals import db, domain, fhir, scope
from services.referrals.codes import DiagnosisCode
from services.referrals.domain import TaskStatus
from services.referrals.observations import PainScore
from services.referrals.usecases.context import Referrals
from shared.auth import Principal, Scope
from shared.errors import NotFound
from shared.pagination import PageRequest, keyset

_HELD = "referrals.held"
M = TypeVar("M")


async def held(session: AsyncSession, model: type[M], ident: str) -> M | None:
    """``session.get`` that keeps the row for the whole transaction.

    The session's identity map holds rows weakly: a row only a helper looked at is gone
    when the helper returns, and the next ``get`` queries again. Referral transactions
    look at the same partner, client and plan several times.
    """
    rows: dict[tuple[type[Any], str], Any] = session.info.setdefault(_HELD, {})
    key = (model, ident)
    if key not in rows:
        rows[key] = await session.get(model, ident)
    return cast("M | None", rows[key])


def hold(session: AsyncSession, model: Any, ident: str, row: Any) -> None:
    """Give :func:`held` a row read with others (a join), so it does not read it again."""
    session.info.setdefault(_HELD, {})[(model, ident)] = row


def plan_progress(plan: db.Plan) -> dict[str, Any]:
    """The plan's ``progress`` (events and JSON), from its components' rows."""
    return domain.plan_progress(
        [
            domain.ComponentProgress(
                discipline=c.discipline,
                sessions=c.sessions,
                per_week=c.per_week,
                completed=c.completed_sessions,
                no_shows=c.no_shows,
                partner_id=c.partner_id,
                closed=c.completed_at is not None,
            )
            for c in plan.components
        ]
    )


# -- partners, plans, clients -------------------------------------------------------------


def partner_key(row: db.Partner) -> tuple[str, str]:
    return (row.name, row.id)


async def list_partners(
    app: Referrals,
    discipline: str | None = None,
    location_id: str | None = None,
    *,
    page: PageRequest,
) -> list[db.Partner]:
    """One page of partners by name (plus one past it, see ``shared.pagination``)."""
    async with app.uow.read() as session:
        query = select(db.Partner)
        if discipline:
            query = query.where(db.Partner.discipline == discipline)
        if location_id:
            # A JSON list of ids: its text holds the id in quotes (SQLite and PostgreSQL),
            # so the filter runs before the page is cut; the exact check follows below.
            text = sql_cast(db.Partner.location_ids, String)
            query = query.where(text.contains(f'"{location_id}"', autoescape=True))
        query = keyset(query, page, (db.Partner.name, db.Partner.id), (str, str))
        partners = list((await session.scalars(query)).all())
    if location_id:
        partners = [p for p in partners if location_id in (p.location_ids or [])]
    return partners


async def get_partner(app: Referrals, partner_id: str) -> db.Partner:
    async with app.uow.read() as session:
        partner = await session.get(db.Partner, partner_id)
        if partner is None:
            raise NotFound("partner", partner_id)
        return partner


async def list_plans(
    app: Referrals,
    client_id: str | None,
    status: str | None,
    *,
    page: PageRequest,
    within: Scope,
) -> Sequence[db.Plan]:
    """One page of plans, newest first (plus one past it)."""
    async with app.uow.read() as session:
        query = select(db.Plan).where(scope.plans(within))
        if client_id:
            query = query.where(db.Plan.client_id == client_id)
        if status:
            query = query.where(db.Plan.status == status)
        order = (db.Plan.created_at, db.Plan.id)
        query = keyset(query, page, order, NEWEST_KINDS, descending=True)
        return (await session.scalars(query)).all()


#: Plans and referrals page newest first by ``(created_at, id)``.
NEWEST_KINDS = (datetime, str)


def newest_key(row: db.Plan | db.Referral) -> tuple[datetime, str]:
    return (row.created_at, row.id)


def record_key(record: ReferralRecord) -> tuple[datetime, str]:
    return newest_key(record.referral)


async def get_plan(app: Referrals, plan_id: str, *, within: Scope) -> db.Plan:
    async with app.uow.read() as session:
        plan = await session.get(db.Plan, plan_id)
        if plan is None or not scope.reaches_plan(within, plan):
            raise NotFound("plan", plan_id)
        return plan


async def _client_within(session: AsyncSession, client_id: str, within: Scope) -> db.Client | None:
    client = await session.get(db.Client, client_id)
    if client is None or within.everything:
        return client
    reachable = await session.scalar(
        select(db.Client.id).where(db.Client.id == client_id, scope.clients(within))
    )
    return client if reachable is not None else None


async def known_client(app: Referrals, client_id: str, *, within: Scope) -> db.Client:
    async with app.uow.read() as session:
        client = await _client_within(session, client_id, within)
        if client is None:
            raise NotFound("client", client_id)
        return client


async def viewable_client(app: Referrals, client_id: str, caller: Principal) -> db.Client:
    """A client's details for the FHIR Patient view: the clinic (within its scope), or a
    partner it was sent to."""
    async with app.uow.read() as session:
        client = await _client_within(session, client_id, Scope.of(caller))
        allowed = caller.role in ("admin", "front_desk")
        if caller.role == "partner":
            client = await session.get(db.Client, client_id)
            allowed = (
                await session.scalar(
                    select(db.Referral.id).where(
                        db.Referral.client_id == client_id,
                        db.Referral.partner_id == caller.partner_id,
                        db.Referral.task_status != TaskStatus.DRAFT.value,
                    )
                )
            ) is not None
        if client is None or not allowed:
            raise NotFound("patient", client_id)
        return client


def pain_score(row: db.Outcome) -> PainScore:
    return PainScore(
        id=row.id,
        client_id=row.client_id,
        session_id=row.session_id,
        score=row.score,
        answered_at=row.answered_at,
        recorded_at=row.recorded_at,
    )


# -- referrals ----------------------------------------------------------------------------


@dataclass
class ReferralRecord:
    """A referral with what its views need, read in one transaction."""

    referral: db.Referral
    partner: db.Partner
    plan: db.Plan
    client: db.Client | None
    history: list[db.ReferralHistory] = field(default_factory=list)
    deliveries: list[db.Delivery] = field(default_factory=list)

    def snapshot(self) -> fhir.ReferralSnapshot:
        r = self.referral
        patient = (
            fhir.PatientDetails(
                id=self.client.id,
                first_name=self.client.first_name,
                last_name=self.client.last_name,
                date_of_birth=self.client.date_of_birth,
                phone=self.client.phone,
            )
            if self.client is not None
            else None
        )
        notes = tuple(
            fhir.TaskNote(at=h.at, text=f"{h.action}: {h.note}")
            for h in self.history
            if h.note and h.action in ("accept", "schedule", "no-show", "interim-note")
        )
        return fhir.ReferralSnapshot(
            id=r.id,
            client_id=r.client_id,
            partner_id=r.partner_id,
            partner_name=self.partner.name,
            discipline=r.discipline,
            task_status=r.task_status,
            business_status=r.business_status,
            status_reason=r.status_reason,
            urgency=r.urgency,
            reason=r.reason,
            codes=tuple(DiagnosisCode(c["code"], c["description"]) for c in r.diagnosis_codes),
            patient=patient,
            plan=fhir.PlanSummary(
                id=self.plan.id,
                goals=self.plan.goals,
                baseline_pain_score=self.plan.baseline_pain_score,
                components=tuple(
                    fhir.PlanComponentSummary(c.discipline, c.sessions, c.per_week)
                    for c in self.plan.components
                ),
                outcomes=tuple(pain_score(o) for o in self.plan.outcomes),
            ),
            created_at=r.created_at,
            updated_at=r.updated_at,
            first_visit_at=r.first_visit_at,
            completed_at=r.completed_at,
            report_summary=r.report_summary,
            report_pdf_size=db.pdf_size(r),
            notes=notes,
        )


async def history_of(session: AsyncSession, referral_id: str) -> list[db.ReferralHistory]:
    return list(
        (
            await session.scalars(
                select(db.ReferralHistory)
                .where(db.ReferralHistory.referral_id == referral_id)
                .order_by(db.ReferralHistory.id)
            )
        ).all()
    )


async def record_of(
    session: AsyncSession, row: db.Referral, *, details: bool = True
) -> ReferralRecord:
    """``row`` with its partner, plan and client (and, with ``details``, its history and
    deliveries), inside the caller's transaction."""
    partner = await held(session, db.Partner, row.partner_id)
    plan = await held(session, db.Plan, row.plan_id)
    assert partner is not None and plan is not None
    client = await held(session, db.Client, row.client_id)
    record = ReferralRecord(row, partner, plan, client)
    if details:
        record.history = await history_of(session, row.id)
        record.deliveries = list(
            (
                await session.scalars(
                    select(db.Delivery)
                    .where(db.Delivery.referral_id == row.id)
                    .order_by(db.Delivery.created_at, db.Delivery.id)
                )
            ).all()
        )
    return record


async def get_referral(app: Referrals, referral_id: str, *, within: Scope) -> ReferralRecord:
    async with app.uow.read() as session:
        row = await session.get(db.Referral, referral_id)
        if row is None:
            raise NotFound("referral", referral_id)
        record = await record_of(session, row)
        if not scope.reaches_plan(within, record.plan):
            raise NotFound("referral", referral_id)
        return record


async def list_referrals(
    app: Referrals,
    *,
    plan_id: str | None = None,
    partner_id: str | None = None,
    client_id: str | None = None,
    status: str | None = None,
    page: PageRequest,
    within: Scope,
) -> list[ReferralRecord]:
    """One page of referrals, newest first (plus one past it); never their report PDFs."""
    async with app.uow.read() as session:
        query = select(db.Referral).where(scope.referrals(within))
        if plan_id:
            query = query.where(db.Referral.plan_id == plan_id)
        if partner_id:
            query = query.where(db.Referral.partner_id == partner_id)
        if client_id:
            query = query.where(db.Referral.client_id == client_id)
        if status:
            query = query.where(db.Referral.status == status)
        order = (db.Referral.created_at, db.Referral.id)
        query = keyset(query, page, order, NEWEST_KINDS, descending=True)
        rows = (await session.scalars(query)).all()
        return [await record_of(session, r, details=False) for r in rows]


def may_see(caller: Principal, row: db.Referral, plan: db.Plan) -> bool:
    """The clinic sees the referrals of its locations' plans; a partner only its own,
    once sent."""
    if caller.role in ("admin", "front_desk"):
        return scope.reaches_plan(Scope.of(caller), plan)
    return (
        caller.role == "partner"
        and caller.partner_id == row.partner_id
        and row.task_status != TaskStatus.DRAFT
    )


async def viewable_referral(app: Referrals, referral_id: str, caller: Principal) -> ReferralRecord:
    """The referral if ``caller`` may see it. Anything else is a 404, so ids of others'
    referrals leak nothing."""
    async with app.uow.read() as session:
        row = await session.get(db.Referral, referral_id)
        if row is None:
            raise NotFound("referral", referral_id)
        record = await record_of(session, row)
        if not may_see(caller, row, record.plan):
            raise NotFound("referral", referral_id)
        return record


async def report_pdf(app: Referrals, referral_id: str, caller: Principal) -> bytes:
    await viewable_referral(app, referral_id, caller)
    async with app.uow.read() as session:
        pdf = await session.scalar(
            select(db.Referral.report_pdf).where(db.Referral.id == referral_id)
        )
    if not pdf:
        raise NotFound("report PDF of referral", referral_id)
    return pdf


# -- the partner's view ---------------------------------------------------------------------


async def partner_records(
    app: Referrals, partner_id: str, status: str | None, *, page: PageRequest
) -> list[ReferralRecord]:
    """A page of the partner's sent referrals, newest first (plus one past it)."""
    async with app.uow.read() as session:
        query = select(db.Referral).where(
            db.Referral.partner_id == partner_id,
            db.Referral.task_status != TaskStatus.DRAFT.value,
        )
        if status:
            query = query.where(db.Referral.status == status)
        order = (db.Referral.created_at, db.Referral.id)
        query = keyset(query, page, order, NEWEST_KINDS, descending=True)
        rows = (await session.scalars(query)).all()
        return [await record_of(session, r) for r in rows]


async def partner_record(app: Referrals, partner_id: str, referral_id: str) -> ReferralRecord:
    """One of the partner's sent referrals; another partner's (or a draft) is not found."""
    async with app.uow.read() as session:
        row = await session.get(db.Referral, referral_id)
        if row is None or row.partner_id != partner_id or row.task_status == TaskStatus.DRAFT:
            raise NotFound("referral", referral_id)
        return await record_of(session, row)
