"""Referrals' use cases: each one a transaction that changes state and queues its events.

A referral's transitions follow ``domain.TRANSITIONS``; each one is written together with
its ``referrals.referral.<status>`` event (the outbox) and, for a partner with a webhook,
the delivery that will tell it. The client's details come from booking's events only.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.referrals import db, domain, fhir
from services.referrals.codes import CodeTable, DiagnosisCode, InvalidDiagnosisCode, default_table
from services.referrals.domain import BusinessStatus, TaskStatus
from services.referrals.schemas import ComponentIn, PartnerIn, PlanIn, ReferralIn
from services.referrals.secretbox import SecretBox, SecretUnreadable, new_webhook_secret
from shared import events
from shared.auth import Principal, Role, create_key
from shared.db import transaction
from shared.logging import safe_error
from shared.outbound import OutboundPolicy, OutboundRefused
from shared.outbox import enqueue
from shared.phones import normalize_phone
from shared.timeutil import as_utc, utcnow

log = structlog.get_logger(__name__)

SOURCE = "referrals"
SYSTEM = "system"


class NotFound(Exception):
    """A referenced row does not exist, or is not the caller's to see (404)."""

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident} not found")


class InvalidRequest(Exception):
    """Well formed, but it cannot be applied (422); ``field`` names the culprit."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class Conflict(Exception):
    """The request clashes with the current state (409)."""


#: Who a committed transaction wakes: the outbox relay (it queued events), the webhook
#: dispatcher (it queued a delivery), the deadline scheduler (it sent a referral).
RELAY, DISPATCHER, DEADLINES = "relay", "dispatcher", "deadlines"
_WAKE = "referrals.wake"


def _wake(session: AsyncSession, *loops: str) -> None:
    session.info.setdefault(_WAKE, set()).update(loops)


@dataclass
class Referrals:
    """Everything a use case needs: the database, a clock, the rules' settings, and who to
    wake after a commit. Only the loops a transaction has work for are woken: each wake-up
    costs the woken loop a transaction of its own."""

    sessions: async_sessionmaker[AsyncSession]
    secretbox: SecretBox
    codes: CodeTable = field(default_factory=default_table)
    clock: Callable[[], datetime] = utcnow
    default_phone_region: str = "US"
    production: bool = False
    #: Which webhook URLs may be called (OUTBOUND_ALLOWED_HOSTS); checked at every request.
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)
    clinic_name: str = "Medical massage clinic"
    base_url: str = "http://127.0.0.1:8003"
    accept_hours: float = 72.0
    expire_after_hours: float = 48.0
    webhook_retry_hours: float = 24.0
    wakers: dict[str, Callable[[], None]] = field(default_factory=dict)
    _remembered: set[str] = field(default_factory=set)

    def remember_wakes(self, session: AsyncSession) -> None:
        """For transactions committed by someone else (the consumers): note who to wake…"""
        self._remembered.update(session.info.get(_WAKE, ()))

    def wake_remembered(self) -> None:
        """…and wake them once that transaction has committed."""
        remembered, self._remembered = self._remembered, set()
        for loop in remembered:
            if loop in self.wakers:
                self.wakers[loop]()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A serialized write transaction; the loops it queued work for are woken after."""
        async with transaction(self.sessions, write=True) as session:
            yield session
            woken = set(session.info.get(_WAKE, ()))
        for loop in woken:
            if loop in self.wakers:
                self.wakers[loop]()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with transaction(self.sessions) as session:
            yield session


def new_id() -> str:
    return str(uuid.uuid4())


_HELD = "referrals.held"
M = TypeVar("M")


async def _held(session: AsyncSession, model: type[M], ident: str) -> M | None:
    """``session.get`` that keeps the row for the whole transaction.

    The session's identity map holds rows weakly: a row only a helper looked at is gone
    when the helper returns, and the next ``get`` queries again. Referral transactions
    look at the same partner, client and plan several times.
    """
    held: dict[tuple[type[Any], str], Any] = session.info.setdefault(_HELD, {})
    key = (model, ident)
    if key not in held:
        held[key] = await session.get(model, ident)
    return cast("M | None", held[key])


# ---------------------------------------------------------------------------------------
# Events


def _event(event_type: str, data: Any, subject: str) -> events.CloudEvent[Any]:
    return events.make_event(event_type, SOURCE, data, subject=subject)


def referral_payload(
    row: db.Referral, partner: db.Partner, client: db.Client | None
) -> events.ReferralEvent:
    """The contract's fields, plus what a consumer needs to act without asking us."""
    extra: dict[str, Any] = {
        "task_status": row.task_status,
        "business_status": row.business_status,
        "urgency": row.urgency,
        "version": row.version,
    }
    if row.status_reason and row.status in ("declined", "cancelled", "expired", "failed"):
        extra["status_reason"] = row.status_reason
    if row.first_visit_at is not None:
        extra["first_visit_at"] = row.first_visit_at.isoformat()
    if row.expire_at is not None and row.task_status in domain.AWAITING_ANSWER:
        extra["respond_by"] = row.expire_at.isoformat()
    if client is not None:
        extra["client"] = {
            "id": client.id,
            "first_name": client.first_name,
            "phone": client.phone,
            "sms_consent": client.sms_consent,
        }
    return events.ReferralEvent(
        referral_id=row.id,
        plan_id=row.plan_id,
        client_id=row.client_id,
        partner=events.PartnerRef(id=partner.id, discipline=partner.discipline),
        status=row.status,
        **extra,
    )


async def _announce(session: AsyncSession, row: db.Referral) -> None:
    partner = await _held(session, db.Partner, row.partner_id)
    assert partner is not None
    client = await _held(session, db.Client, row.client_id)
    _wake(session, RELAY)
    await enqueue(
        session,
        _event(events.referral_subject(row.status), referral_payload(row, partner, client), row.id),
    )


def plan_progress(plan: db.Plan) -> dict[str, Any]:
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


async def _announce_plan(session: AsyncSession, plan: db.Plan, event_type: str) -> None:
    data = events.PlanEvent(
        plan_id=plan.id,
        client_id=plan.client_id,
        progress=plan_progress(plan),
        status=plan.status,
        version=plan.version,
    )
    _wake(session, RELAY)
    await enqueue(session, _event(event_type, data, plan.id))


# ---------------------------------------------------------------------------------------
# Partners


async def create_partner(app: Referrals, data: PartnerIn) -> tuple[db.Partner, str, str]:
    """A partner, its API key and its webhook secret (the two are returned this once)."""
    phone = normalize_phone(data.phone, app.default_phone_region)
    webhook_url = str(data.webhook_url) if data.webhook_url else None
    if webhook_url and app.production and not webhook_url.startswith("https://"):
        raise InvalidRequest("webhook_url", "must be https in production")
    if webhook_url:
        try:
            await app.outbound.acheck(webhook_url)
        except OutboundRefused as exc:
            raise InvalidRequest("webhook_url", str(exc)) from exc
    secret = new_webhook_secret()
    async with app.write() as session:
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
            webhook_secret_sealed=app.secretbox.seal(secret),
            api_key_id=key_id,
            created_at=app.clock(),
        )
        session.add(partner)
    return partner, api_key, secret


async def list_partners(
    app: Referrals, discipline: str | None = None, location_id: str | None = None
) -> list[db.Partner]:
    async with app.read() as session:
        query = select(db.Partner).order_by(db.Partner.name)
        if discipline:
            query = query.where(db.Partner.discipline == discipline)
        partners = list((await session.scalars(query)).all())
    if location_id:  # a JSON list: filtered here, the table is small
        partners = [p for p in partners if location_id in (p.location_ids or [])]
    return partners


async def issue_api_key(
    app: Referrals, name: str, role: Role, location_ids: list[str]
) -> tuple[str, str]:
    """A clinic key (admin, or front desk for some locations) for this service; shown once."""
    key_id = new_id()
    async with app.write() as session:
        key = await create_key(
            session, key_id=key_id, name=name, role=role, location_ids=location_ids
        )
    return key_id, key


async def get_partner(app: Referrals, partner_id: str) -> db.Partner:
    async with app.read() as session:
        partner = await session.get(db.Partner, partner_id)
        if partner is None:
            raise NotFound("partner", partner_id)
        return partner


# ---------------------------------------------------------------------------------------
# Plans


async def _check_component_partner(
    session: AsyncSession, index: int, component: ComponentIn
) -> None:
    if component.partner_id is None:
        return
    where = f"components[{index}].partner_id"
    if component.discipline == domain.MASSAGE:
        raise InvalidRequest(where, "massage is the clinic's own; it takes no partner")
    partner = await session.get(db.Partner, component.partner_id)
    if partner is None:
        raise InvalidRequest(where, f"partner {component.partner_id} not found")
    if partner.discipline != component.discipline:
        raise InvalidRequest(
            where,
            f"partner {partner.id} offers {partner.discipline}, not {component.discipline}",
        )


async def create_plan(app: Referrals, data: PlanIn) -> db.Plan:
    async with app.write() as session:
        for index, component in enumerate(data.components):
            await _check_component_partner(session, index, component)
        now = app.clock()
        plan = db.Plan(
            id=new_id(),
            client_id=data.client_id,
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
        await _announce_plan(session, plan, events.PLAN_CREATED)
        return plan


async def list_plans(
    app: Referrals, client_id: str | None, status: str | None, limit: int, offset: int
) -> Sequence[db.Plan]:
    async with app.read() as session:
        query = select(db.Plan).order_by(db.Plan.created_at.desc(), db.Plan.id)
        if client_id:
            query = query.where(db.Plan.client_id == client_id)
        if status:
            query = query.where(db.Plan.status == status)
        return (await session.scalars(query.limit(limit).offset(offset))).all()


async def get_plan(app: Referrals, plan_id: str) -> db.Plan:
    async with app.read() as session:
        plan = await session.get(db.Plan, plan_id)
        if plan is None:
            raise NotFound("plan", plan_id)
        return plan


async def _plan_changed(session: AsyncSession, app: Referrals, plan: db.Plan) -> None:
    """Announce new progress; complete the plan when every component is done."""
    now = app.clock()
    plan.version += 1
    plan.updated_at = now
    await _announce_plan(session, plan, events.PLAN_UPDATED)
    if plan.status == "active" and plan_progress(plan)["completed"]:
        plan.status = "completed"
        plan.completed_at = now
        plan.version += 1
        await _announce_plan(session, plan, events.PLAN_COMPLETED)


async def _lock_plan(session: AsyncSession, plan_id: str) -> db.Plan | None:
    return (
        await session.scalars(select(db.Plan).where(db.Plan.id == plan_id).with_for_update())
    ).first()


# ---------------------------------------------------------------------------------------
# Referrals: creation, transitions


async def _apply(
    session: AsyncSession,
    app: Referrals,
    row: db.Referral,
    action: str,
    *,
    actor: str,
    note: str | None = None,
    status_reason: str | None = None,
    updates: dict[str, Any] | None = None,
) -> None:
    """Make one transition of the state machine, record it and queue its event."""
    move = domain.transition(row.task_status, action)
    now = app.clock()
    for name, value in (updates or {}).items():
        setattr(row, name, value)
    row.task_status = move.target.value
    row.status = move.announces
    if action in domain.BUSINESS_STATUS_AFTER:
        after = domain.BUSINESS_STATUS_AFTER[action]
        row.business_status = after.value if after is not None else None
    if status_reason is not None:
        row.status_reason = status_reason
    row.version += 1
    row.updated_at = now
    session.add(
        db.ReferralHistory(
            referral_id=row.id,
            at=now,
            action=action,
            task_status=row.task_status,
            business_status=row.business_status,
            note=note,
            actor=actor,
        )
    )
    await _announce(session, row)


async def _queue_delivery(
    session: AsyncSession, app: Referrals, row: db.Referral, kind: str
) -> None:
    """Queue a webhook to the partner, if it has one; partners without poll the API."""
    partner = await _held(session, db.Partner, row.partner_id)
    if partner is None or partner.webhook_url is None:
        return
    now = app.clock()
    _wake(session, DISPATCHER)
    session.add(
        db.Delivery(
            id=new_id(),
            referral_id=row.id,
            partner_id=partner.id,
            kind=kind,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            deadline_at=now + timedelta(hours=app.webhook_retry_hours),
            created_at=now,
        )
    )


async def _supersede_deliveries(session: AsyncSession, referral_id: str) -> None:
    """The referral was withdrawn: stop sending it (and its reminders)."""
    await session.execute(
        update(db.Delivery)
        .where(
            db.Delivery.referral_id == referral_id,
            db.Delivery.status == "pending",
            db.Delivery.kind.in_(("requested", "reminder")),
        )
        .values(status="superseded")
    )


async def _issue(session: AsyncSession, app: Referrals, row: db.Referral, actor: str) -> None:
    """Send the referral: its deadlines start now, and its webhook (if any) is queued."""
    now = app.clock()
    remind_at, expire_at = domain.answer_deadlines(now, app.accept_hours, app.expire_after_hours)
    await _apply(
        session,
        app,
        row,
        "issue",
        actor=actor,
        updates={
            "issued_at": now,
            "remind_at": remind_at,
            "expire_at": expire_at,
            "deadlines_scheduled": False,
        },
    )
    await _queue_delivery(session, app, row, "requested")
    _wake(session, DEADLINES)


def _check_codes(app: Referrals, raw: list[str]) -> list[DiagnosisCode]:
    try:
        return app.codes.check_all(raw)
    except InvalidDiagnosisCode as exc:
        raise InvalidRequest("diagnosis_codes", str(exc)) from exc


async def create_referral(app: Referrals, data: ReferralIn, actor: str) -> ReferralRecord:
    """A referral for the partner's discipline of a plan; sent at once if the client's
    details are known, otherwise it waits (draft) for ``booking.client.*``."""
    if not data.consent_to_share:
        raise InvalidRequest("consent_to_share", "the client must consent to sharing")
    codes = _check_codes(app, data.diagnosis_codes)
    try:
        async with app.write() as session:
            plan = await _lock_plan(session, data.plan_id)
            if plan is None:
                raise InvalidRequest("plan_id", f"plan {data.plan_id} not found")
            partner = await _held(session, db.Partner, data.partner_id)
            if partner is None:
                raise InvalidRequest("partner_id", f"partner {data.partner_id} not found")
            if plan.status != "active":
                raise Conflict(f"plan {plan.id} is {plan.status}")
            component = next(
                (c for c in plan.components if c.discipline == partner.discipline), None
            )
            if component is None:
                have = ", ".join(c.discipline for c in plan.components)
                raise InvalidRequest(
                    "partner_id",
                    f"partner {partner.id} offers {partner.discipline}, which plan {plan.id} "
                    f"does not include (it has: {have})",
                )
            live = await session.scalar(
                select(db.Referral.id).where(
                    db.Referral.plan_id == plan.id,
                    db.Referral.partner_id == partner.id,
                    db.Referral.discipline == partner.discipline,
                    db.Referral.task_status.in_([s.value for s in domain.LIVE]),
                )
            )
            if live is not None:
                raise Conflict(
                    f"partner {partner.id} already has referral {live} for this plan's "
                    f"{partner.discipline}; cancel it first"
                )
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
            session.add(
                db.ReferralHistory(
                    referral_id=row.id,
                    at=now,
                    action="create",
                    task_status=row.task_status,
                    business_status=row.business_status,
                    actor=actor,
                )
            )
            await session.flush()
            await _announce(session, row)
            if await _held(session, db.Client, plan.client_id) is not None:
                await _issue(session, app, row, actor)
            return await _record(session, row)
    except IntegrityError as exc:
        # Two concurrent requests on PostgreSQL: the partial unique index decided.
        raise Conflict("this partner already has a live referral for this plan") from exc


async def _lock_referral(session: AsyncSession, referral_id: str) -> db.Referral:
    row = (
        await session.scalars(
            select(db.Referral).where(db.Referral.id == referral_id).with_for_update()
        )
    ).first()
    if row is None:
        raise NotFound("referral", referral_id)
    return row


async def cancel_referral(app: Referrals, referral_id: str, reason: str, actor: str) -> None:
    async with app.write() as session:
        row = await _lock_referral(session, referral_id)
        was_sent = row.task_status != TaskStatus.DRAFT
        await _apply(session, app, row, "cancel", actor=actor, note=reason, status_reason=reason)
        await _supersede_deliveries(session, row.id)
        if was_sent:
            await _queue_delivery(session, app, row, "cancelled")


# ---------------------------------------------------------------------------------------
# Reading referrals


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
            ),
            created_at=r.created_at,
            updated_at=r.updated_at,
            first_visit_at=r.first_visit_at,
            completed_at=r.completed_at,
            report_summary=r.report_summary,
            report_pdf_size=db.pdf_size(r),
            notes=notes,
        )


async def _record(
    session: AsyncSession, row: db.Referral, *, details: bool = True
) -> ReferralRecord:
    partner = await _held(session, db.Partner, row.partner_id)
    plan = await _held(session, db.Plan, row.plan_id)
    assert partner is not None and plan is not None
    client = await _held(session, db.Client, row.client_id)
    record = ReferralRecord(row, partner, plan, client)
    if details:
        record.history = list(
            (
                await session.scalars(
                    select(db.ReferralHistory)
                    .where(db.ReferralHistory.referral_id == row.id)
                    .order_by(db.ReferralHistory.id)
                )
            ).all()
        )
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


async def get_referral(app: Referrals, referral_id: str) -> ReferralRecord:
    async with app.read() as session:
        row = await session.get(db.Referral, referral_id)
        if row is None:
            raise NotFound("referral", referral_id)
        return await _record(session, row)


async def list_referrals(
    app: Referrals,
    *,
    plan_id: str | None = None,
    partner_id: str | None = None,
    client_id: str | None = None,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[ReferralRecord]:
    async with app.read() as session:
        query = select(db.Referral).order_by(db.Referral.created_at.desc(), db.Referral.id)
        if plan_id:
            query = query.where(db.Referral.plan_id == plan_id)
        if partner_id:
            query = query.where(db.Referral.partner_id == partner_id)
        if client_id:
            query = query.where(db.Referral.client_id == client_id)
        if status:
            query = query.where(db.Referral.status == status)
        rows = (await session.scalars(query.limit(limit).offset(offset))).all()
        return [await _record(session, r, details=False) for r in rows]


async def report_pdf(app: Referrals, referral_id: str, caller: Principal) -> bytes:
    await viewable_referral(app, referral_id, caller)
    async with app.read() as session:
        pdf = await session.scalar(
            select(db.Referral.report_pdf).where(db.Referral.id == referral_id)
        )
    if not pdf:
        raise NotFound("report PDF of referral", referral_id)
    return pdf


async def viewable_referral(app: Referrals, referral_id: str, caller: Principal) -> ReferralRecord:
    """The referral if ``caller`` may see it: the clinic always, a partner only its own
    referrals once sent. Anything else is a 404, so ids of others' referrals leak nothing."""
    async with app.read() as session:
        row = await session.get(db.Referral, referral_id)
        if row is None or not _may_see(caller, row):
            raise NotFound("referral", referral_id)
        return await _record(session, row)


def _may_see(caller: Principal, row: db.Referral) -> bool:
    if caller.role in ("admin", "front_desk"):
        return True
    return (
        caller.role == "partner"
        and caller.partner_id == row.partner_id
        and row.task_status != TaskStatus.DRAFT
    )


async def viewable_client(app: Referrals, client_id: str, caller: Principal) -> db.Client:
    """A client's details for the FHIR Patient view: the clinic, or a partner it was sent to."""
    async with app.read() as session:
        client = await session.get(db.Client, client_id)
        allowed = caller.role in ("admin", "front_desk")
        if not allowed and caller.role == "partner":
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


# ---------------------------------------------------------------------------------------
# The partner API


async def _partner_referral(
    session: AsyncSession, partner_id: str, referral_id: str
) -> db.Referral:
    """Another partner's referral (or one not sent yet) is simply not found."""
    row = await _lock_referral(session, referral_id)
    if row.partner_id != partner_id or row.task_status == TaskStatus.DRAFT:
        raise NotFound("referral", referral_id)
    return row


async def _acknowledge(app: Referrals, partner_id: str, referral_ids: list[str]) -> None:
    """The partner has read these: requested → received (its event tells the front desk)."""
    async with app.write() as session:
        for referral_id in referral_ids:
            row = await _partner_referral(session, partner_id, referral_id)
            if row.task_status == TaskStatus.REQUESTED:
                await _apply(
                    session,
                    app,
                    row,
                    "receive",
                    actor=f"partner:{partner_id}",
                    updates={"received_at": app.clock()},
                )


async def partner_referrals(
    app: Referrals, partner_id: str, status: str | None, limit: int, offset: int
) -> list[ReferralRecord]:
    """The partner's referrals, newest first. Reading one acknowledges its receipt."""

    async def load() -> list[ReferralRecord]:
        async with app.read() as session:
            query = (
                select(db.Referral)
                .where(
                    db.Referral.partner_id == partner_id,
                    db.Referral.task_status != TaskStatus.DRAFT.value,
                )
                .order_by(db.Referral.created_at.desc(), db.Referral.id)
            )
            if status:
                query = query.where(db.Referral.status == status)
            rows = (await session.scalars(query.limit(limit).offset(offset))).all()
            return [await _record(session, r) for r in rows]

    records = await load()
    unread = [r.referral.id for r in records if r.referral.task_status == TaskStatus.REQUESTED]
    if unread:
        await _acknowledge(app, partner_id, unread)
        records = await load()
    return records


async def partner_referral(app: Referrals, partner_id: str, referral_id: str) -> ReferralRecord:
    async with app.read() as session:
        row = await session.get(db.Referral, referral_id)
        if row is None or row.partner_id != partner_id or row.task_status == TaskStatus.DRAFT:
            raise NotFound("referral", referral_id)
        unread = row.task_status == TaskStatus.REQUESTED
    if unread:
        await _acknowledge(app, partner_id, [referral_id])
    async with app.read() as session:
        row = await session.get(db.Referral, referral_id)
        assert row is not None
        return await _record(session, row)


async def _partner_transition(
    app: Referrals,
    partner_id: str,
    referral_id: str,
    action: str,
    *,
    note: str | None = None,
    status_reason: str | None = None,
    updates: dict[str, Any] | None = None,
    after: Callable[[AsyncSession, db.Referral], Any] | None = None,
) -> ReferralRecord:
    async with app.write() as session:
        row = await _partner_referral(session, partner_id, referral_id)
        await _apply(
            session,
            app,
            row,
            action,
            actor=f"partner:{partner_id}",
            note=note,
            status_reason=status_reason,
            updates=updates,
        )
        if after is not None:
            await after(session, row)
        return await _record(session, row)


async def accept(
    app: Referrals, partner_id: str, referral_id: str, note: str | None
) -> ReferralRecord:
    return await _partner_transition(
        app, partner_id, referral_id, "accept", note=note, updates={"answered_at": app.clock()}
    )


async def decline(app: Referrals, partner_id: str, referral_id: str, reason: str) -> ReferralRecord:
    return await _partner_transition(
        app,
        partner_id,
        referral_id,
        "decline",
        note=reason,
        status_reason=reason,
        updates={"answered_at": app.clock()},
    )


async def schedule(
    app: Referrals, partner_id: str, referral_id: str, start: datetime, note: str | None
) -> ReferralRecord:
    return await _partner_transition(
        app,
        partner_id,
        referral_id,
        "schedule",
        note=note,
        updates={"first_visit_at": as_utc(start)},
    )


async def complete(
    app: Referrals,
    partner_id: str,
    referral_id: str,
    summary: str,
    sessions_completed: int | None,
    pdf: bytes | None,
) -> ReferralRecord:
    async def count(session: AsyncSession, row: db.Referral) -> None:
        await _partner_progress(session, app, row, sessions_completed, finished=True)

    return await _partner_transition(
        app,
        partner_id,
        referral_id,
        "complete",
        updates={
            "report_summary": summary,
            "report_pdf": pdf,
            "sessions_reported": sessions_completed,
            "completed_at": app.clock(),
        },
        after=count,
    )


async def report(
    app: Referrals,
    partner_id: str,
    referral_id: str,
    update_kind: BusinessStatus,
    note: str | None,
    sessions_completed: int | None = None,
) -> ReferralRecord:
    """A no-show or an interim note: a business status, no Task transition."""
    async with app.write() as session:
        row = await _partner_referral(session, partner_id, referral_id)
        domain.check_business_update(row.task_status, update_kind)
        now = app.clock()
        row.business_status = update_kind.value
        if sessions_completed is not None:
            row.sessions_reported = max(row.sessions_reported or 0, sessions_completed)
        row.version += 1
        row.updated_at = now
        session.add(
            db.ReferralHistory(
                referral_id=row.id,
                at=now,
                action=update_kind.value,
                task_status=row.task_status,
                business_status=row.business_status,
                note=note,
                actor=f"partner:{partner_id}",
            )
        )
        if sessions_completed is not None:
            await _partner_progress(session, app, row, sessions_completed, finished=False)
        return await _record(session, row)


async def _partner_progress(
    session: AsyncSession,
    app: Referrals,
    row: db.Referral,
    sessions_completed: int | None,
    *,
    finished: bool,
) -> None:
    """A partner's report moves its component of the plan."""
    plan = await _lock_plan(session, row.plan_id)
    if plan is None:
        return
    component = next((c for c in plan.components if c.discipline == row.discipline), None)
    if component is None:
        return
    before = (component.completed_sessions, component.completed_at)
    if sessions_completed is not None:
        component.completed_sessions = max(component.completed_sessions, sessions_completed)
    if finished:
        if sessions_completed is None:
            component.completed_sessions = max(component.completed_sessions, component.sessions)
        component.completed_at = component.completed_at or app.clock()
    if (component.completed_sessions, component.completed_at) != before:
        await _plan_changed(session, app, plan)


# ---------------------------------------------------------------------------------------
# Booking's events


async def apply_client_event(
    app: Referrals, session: AsyncSession, event: events.CloudEvent[Any]
) -> None:
    """Keep our copy of a client; send the referrals that were waiting for it."""
    details: events.ClientDetails = event.data.client
    at = event.time if event.time.tzinfo is not None else event.time.replace(tzinfo=UTC)
    row = await session.get(db.Client, details.id)
    if row is not None and row.source_time >= at:
        return  # an older state arriving late
    if row is None:
        row = db.Client(id=details.id)
        session.add(row)
    row.first_name = details.first_name
    row.last_name = details.last_name
    row.date_of_birth = details.date_of_birth
    row.phone = details.phone
    row.email = details.email
    row.sms_consent = details.sms_consent
    row.source_time = at
    row.updated_at = app.clock()
    await session.flush()
    drafts = (
        await session.scalars(
            select(db.Referral)
            .where(
                db.Referral.client_id == details.id,
                db.Referral.task_status == TaskStatus.DRAFT.value,
            )
            .with_for_update()
        )
    ).all()
    for draft in drafts:
        await _issue(session, app, draft, SYSTEM)


async def apply_session_event(
    app: Referrals, session: AsyncSession, event: events.CloudEvent[Any]
) -> None:
    """A completed session (or a no-show) counts toward the client's massage component."""
    if event.type not in (events.SESSION_COMPLETED, events.SESSION_NO_SHOW):
        return
    data: events.SessionEvent = event.data
    if await session.get(db.CountedSession, data.session_id) is not None:
        return
    plan = (
        await session.scalars(
            select(db.Plan)
            .join(db.PlanComponent, db.PlanComponent.plan_id == db.Plan.id)
            .where(
                db.Plan.client_id == data.client.id,
                db.Plan.status == "active",
                db.Plan.created_at <= as_utc(data.end),
                db.PlanComponent.discipline == domain.MASSAGE,
                db.PlanComponent.completed_at.is_(None),
            )
            .order_by(db.Plan.created_at, db.Plan.id)
            .limit(1)
            .with_for_update()
        )
    ).first()
    if plan is None:
        return  # no plan wants this session
    component = next(c for c in plan.components if c.discipline == domain.MASSAGE)
    now = app.clock()
    completed = event.type == events.SESSION_COMPLETED
    session.add(
        db.CountedSession(
            session_id=data.session_id,
            plan_id=plan.id,
            outcome="completed" if completed else "no_show",
            counted_at=now,
        )
    )
    if completed:
        component.completed_sessions += 1
        if component.completed_sessions >= component.sessions:
            component.completed_at = now
    else:
        component.no_shows += 1
    await _plan_changed(session, app, plan)


async def known_client(app: Referrals, client_id: str) -> db.Client:
    async with app.read() as session:
        client = await session.get(db.Client, client_id)
        if client is None:
            raise NotFound("client", client_id)
        return client


# ---------------------------------------------------------------------------------------
# Deadlines (run by the active scheduler's jobs)

#: A job may fire a little early (clock differences between replicas); not earlier.
_DEADLINE_SLACK = timedelta(seconds=5)


async def remind_partner(app: Referrals, referral_id: str) -> bool:
    """Not accepted in time: remind the partner (webhook, or recorded for the API)."""
    async with app.write() as session:
        row = (
            await session.scalars(
                select(db.Referral).where(db.Referral.id == referral_id).with_for_update()
            )
        ).first()
        now = app.clock()
        if (
            row is None
            or row.task_status not in domain.AWAITING_ANSWER
            or row.reminded_at is not None
            or row.remind_at is None
            or now < row.remind_at - _DEADLINE_SLACK
        ):
            return False
        row.reminded_at = now
        row.business_status = BusinessStatus.REMINDER_SENT.value
        row.version += 1
        row.updated_at = now
        session.add(
            db.ReferralHistory(
                referral_id=row.id,
                at=now,
                action="remind",
                task_status=row.task_status,
                business_status=row.business_status,
                note=f"not accepted within {app.accept_hours:g} h",
                actor=SYSTEM,
            )
        )
        await _queue_delivery(session, app, row, "reminder")
        log.info("referral.reminded", referral_id=row.id)
        return True


async def expire_referral(app: Referrals, referral_id: str) -> bool:
    """Still not accepted after the reminder: withdraw it, tell the front desk and partner."""
    async with app.write() as session:
        row = (
            await session.scalars(
                select(db.Referral).where(db.Referral.id == referral_id).with_for_update()
            )
        ).first()
        now = app.clock()
        if (
            row is None
            or row.task_status not in domain.AWAITING_ANSWER
            or row.expire_at is None
            or now < row.expire_at - _DEADLINE_SLACK
        ):
            return False
        hours = app.accept_hours + app.expire_after_hours
        reason = f"not accepted within {hours:g} h"
        await _apply(session, app, row, "expire", actor=SYSTEM, note=reason, status_reason=reason)
        await _supersede_deliveries(session, row.id)
        await _queue_delivery(session, app, row, "expired")
        log.info("referral.expired", referral_id=row.id)
        return True


@dataclass(frozen=True)
class DeadlinePlan:
    referral_id: str
    remind_at: datetime
    expire_at: datetime


async def unplanned_deadlines(app: Referrals, limit: int = 500) -> list[DeadlinePlan]:
    """Referrals waiting for an answer whose deadline jobs the scheduler has not made yet."""
    async with app.read() as session:
        rows = (
            await session.execute(
                select(db.Referral.id, db.Referral.remind_at, db.Referral.expire_at)
                .where(
                    db.Referral.deadlines_scheduled.is_(False),
                    db.Referral.task_status.in_([s.value for s in domain.AWAITING_ANSWER]),
                    db.Referral.remind_at.is_not(None),
                    db.Referral.expire_at.is_not(None),
                )
                .limit(limit)
            )
        ).all()
        return [DeadlinePlan(r.id, r.remind_at, r.expire_at) for r in rows]


async def mark_deadlines_planned(app: Referrals, referral_ids: Sequence[str]) -> None:
    # No wake-up after this commit: it changes nothing anyone waits for.
    async with transaction(app.sessions, write=True) as session:
        await session.execute(
            update(db.Referral)
            .where(db.Referral.id.in_(list(referral_ids)))
            .values(deadlines_scheduled=True)
        )


# ---------------------------------------------------------------------------------------
# Webhook deliveries (run by the dispatcher)


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
    async with transaction(app.sessions, write=True) as session:
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
            partner = await _held(session, db.Partner, delivery.partner_id)
            if referral is None or partner is None or not partner.webhook_url:
                delivery.status = "superseded"
                continue
            try:
                record = await _record(session, referral, details=False)
                record.history = list(
                    (
                        await session.scalars(
                            select(db.ReferralHistory)
                            .where(db.ReferralHistory.referral_id == referral.id)
                            .order_by(db.ReferralHistory.id)
                        )
                    ).all()
                )
                body = fhir.to_bytes(
                    fhir.bundle(
                        record.snapshot(),
                        bundle_id=delivery.id,
                        timestamp=now,
                        clinic_name=app.clinic_name,
                        base_url=app.base_url,
                    )
                )
                secret = app.secretbox.open(partner.webhook_secret_sealed)
            except (SecretUnreadable, ValueError) as exc:
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


async def record_delivery(
    app: Referrals,
    delivery_id: str,
    *,
    ok: bool,
    status_code: int | None,
    error: str | None,
    retry_delay: Callable[[int], float],
) -> None:
    """The partner's answer: delivered, another attempt later, or failed for good."""
    async with app.write() as session:
        referral_id = await session.scalar(
            select(db.Delivery.referral_id).where(db.Delivery.id == delivery_id)
        )
        if referral_id is None:
            return
        # Referral first, then its delivery: the order every other writer locks them in.
        referral = await _lock_referral(session, referral_id)
        delivery = (
            await session.scalars(
                select(db.Delivery).where(db.Delivery.id == delivery_id).with_for_update()
            )
        ).first()
        if delivery is None or delivery.status != "pending":
            return
        now = app.clock()
        delivery.last_status_code = status_code
        delivery.last_error = error[:500] if error else None
        if ok:
            delivery.status = "delivered"
            delivery.delivered_at = now
            if delivery.kind == "requested" and referral.task_status == TaskStatus.REQUESTED:
                await _apply(
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
            await _apply(
                session, app, referral, "fail", actor=SYSTEM, note=reason, status_reason=reason
            )
