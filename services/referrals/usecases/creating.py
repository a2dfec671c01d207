"""Creating a referral, the front desk's hot path, in SQLAlchemy Core with cached statements.

What a create reads comes in one statement (the plan locked on PostgreSQL, its components,
the partner, the client if booking told us of them, a live referral of that partner in the
plan, and whether the plan has pain scores), and what it writes goes in one statement per
table (the referral, its history rows, its events, its delivery). The ORM path did the same
work in about fifteen statements, each a round trip (on SQLite, several thread hops).

When the client is known and the partner has a webhook, the referral is sent at once and
its delivery is handed to the local dispatcher after the commit (``context.Handoff``):
written claimed, with the Bundle's facts read here, so the partner hears of it without a
claim transaction. A plan with pain scores goes the claiming way (its Bundle carries them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    CompoundSelect,
    Select,
    Table,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals import db, domain, fhir
from services.referrals.codes import DiagnosisCode
from services.referrals.domain import (
    BusinessStatus,
    DisciplineNotInPlan,
    PlanNotActive,
    ReferralAlreadyLive,
    TaskStatus,
    UnknownPartner,
    UnknownPlan,
)
from services.referrals.usecases.context import DEADLINES, DISPATCHER, SOURCE, Referrals
from services.referrals.usecases.lifecycle import referral_payload
from shared import events
from shared.auth import Scope
from shared.ids import new_id
from shared.outbox import OUTBOX, outbox
from shared.uow import after_commit

_plans = cast(Table, db.Plan.__table__)
_components = cast(Table, db.PlanComponent.__table__)
_partners = cast(Table, db.Partner.__table__)
_clients = cast(Table, db.Client.__table__)
_referrals = cast(Table, db.Referral.__table__)
_outcomes = cast(Table, db.Outcome.__table__)
_history = cast(Table, db.ReferralHistory.__table__)
_deliveries = cast(Table, db.Delivery.__table__)

_LIVE = sorted(s.value for s in domain.LIVE)


def _facts_statement(lock: bool, n: int | None = None) -> Select[Any]:
    """The facts of one create; ``n``: the ``n``-th of a batch (its own parameters, its
    index as ``batch_index``, unordered: the batch's statement orders)."""
    suffix = "" if n is None else f"_{n}"
    live = (
        select(_referrals.c.id)
        .where(
            _referrals.c.plan_id == _plans.c.id,
            _referrals.c.partner_id == _partners.c.id,
            _referrals.c.discipline == _partners.c.discipline,
            _referrals.c.task_status.in_(_LIVE),
        )
        .limit(1)
        .scalar_subquery()
    )
    scores = (
        select(func.count()).select_from(_outcomes).where(_outcomes.c.plan_id == _plans.c.id)
    ).scalar_subquery()
    query = (
        select(
            _plans.c.id,
            _plans.c.client_id,
            _plans.c.location_id,
            _plans.c.status,
            _plans.c.goals,
            _plans.c.baseline_pain_score,
            _partners.c.id.label("partner_id"),
            _partners.c.name.label("partner_name"),
            _partners.c.discipline.label("partner_discipline"),
            _partners.c.webhook_url,
            _partners.c.webhook_secret_sealed,
            _clients.c.id.label("known_client"),
            _clients.c.first_name,
            _clients.c.last_name,
            _clients.c.date_of_birth,
            _clients.c.phone,
            _clients.c.sms_consent,
            _components.c.id.label("component_id"),
            _components.c.discipline.label("component_discipline"),
            _components.c.sessions,
            _components.c.per_week,
            _components.c.partner_id.label("component_partner"),
            live.label("live_id"),
            scores.label("scores"),
            _components.c.position.label("component_position"),
            literal_column(str(n or 0)).label("batch_index"),
        )
        .select_from(
            _plans.outerjoin(_partners, _partners.c.id == bindparam(f"partner_id{suffix}"))
            .outerjoin(_clients, _clients.c.id == _plans.c.client_id)
            .outerjoin(_components, _components.c.plan_id == _plans.c.id)
        )
        .where(_plans.c.id == bindparam(f"plan_id{suffix}"))
    )
    if n is not None:
        return query
    query = query.order_by(_components.c.position)
    # The plan's row lock serializes creates of one plan on PostgreSQL (SQLite: one writer).
    return query.with_for_update(of=_plans) if lock else query


def _batch_statement(size: int) -> CompoundSelect:
    """The facts of ``size`` creates in one statement (``read_batch_facts``)."""
    return union_all(*(_facts_statement(False, n) for n in range(size))).order_by(
        literal_column("batch_index"), literal_column("component_position")
    )


#: The plans of a batch locked in id order, the order every create locks them in.
_LOCK_PLANS = (
    select(_plans.c.id)
    .where(_plans.c.id.in_(bindparam("plan_ids", expanding=True)))
    .order_by(_plans.c.id)
    .with_for_update()
)
_BATCHES: dict[int, CompoundSelect] = {}


_FACTS = {False: _facts_statement(False), True: _facts_statement(True)}
_INSERT_REFERRAL = insert(_referrals)
_INSERT_HISTORY = insert(_history)
_INSERT_OUTBOX = insert(outbox)
_INSERT_DELIVERY = insert(_deliveries)
_SET_COMPONENT_PARTNER = (
    update(_components)
    .where(_components.c.id == bindparam("component"))
    .values(partner_id=bindparam("partner"))
)


@dataclass(frozen=True)
class PreparedWebhook:
    """A delivery written claimed, and what its signed Bundle is built from."""

    delivery_id: str
    referral_id: str
    kind: str
    url: str
    secret_sealed: str
    snapshot: fhir.ReferralSnapshot
    attempt: int = 1


@dataclass
class Created:
    """The new referral as the ORM rows its HTTP answer is shaped from (not in a session)."""

    referral: db.Referral
    history: list[db.ReferralHistory]
    deliveries: list[db.Delivery]


async def read_facts(session: AsyncSession, plan_id: str, partner_id: str) -> list[Any]:
    lock = session.get_bind().dialect.name == "postgresql"
    result = await session.execute(_FACTS[lock], {"plan_id": plan_id, "partner_id": partner_id})
    return list(result.all())


async def read_batch_facts(session: AsyncSession, keys: list[tuple[str, str]]) -> list[list[Any]]:
    """:func:`read_facts` for each (plan, partner) of a batch, in one statement: on SQLite
    every statement is several hops to the driver's thread, which under load cost more
    than the reads. On PostgreSQL the batch's plans are locked first (a UNION cannot
    lock), in id order as before. What each create then checks and writes is unchanged:
    the batch's writes are flushed after every check, as before."""
    if len(keys) == 1:
        return [await read_facts(session, *keys[0])]
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(_LOCK_PLANS, {"plan_ids": sorted({plan for plan, _ in keys})})
    statement = _BATCHES.get(len(keys))
    if statement is None:
        statement = _BATCHES[len(keys)] = _batch_statement(len(keys))
    params: dict[str, str] = {}
    for n, (plan, partner) in enumerate(keys):
        params[f"plan_id_{n}"] = plan
        params[f"partner_id_{n}"] = partner
    facts: list[list[Any]] = [[] for _ in keys]
    for row in (await session.execute(statement, params)).all():
        facts[row.batch_index].append(row)
    return facts


def _event(row: db.Referral, partner: db.Partner, client: db.Client | None) -> dict[str, Any]:
    event = events.make_event(
        events.referral_subject(row.status), SOURCE, referral_payload(row, partner, client), row.id
    )
    return {
        "event_id": event.id,
        "subject": event.type,
        "payload": event.model_dump_json(),
        "created_at": event.time,
    }


def _history_row(row: db.Referral, action: str, actor: str, at: datetime) -> dict[str, Any]:
    return {
        "referral_id": row.id,
        "at": at,
        "action": action,
        "task_status": row.task_status,
        "business_status": row.business_status,
        "note": None,
        "actor": actor,
    }


_REFERRAL_COLUMNS = [c.key for c in _referrals.columns if c.key != "report_pdf"]


@dataclass
class Writes:
    """What a batch of creates writes, one statement per table at the end."""

    referrals: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    #: plan component id -> the partner it now goes to (the last create's wins).
    components: dict[int, str] = field(default_factory=dict)
    prepared: list[PreparedWebhook] = field(default_factory=list)
    #: (plan, partner, discipline) -> the live referral this batch made.
    live: dict[tuple[str, str, str], str] = field(default_factory=dict)

    async def flush(self, session: AsyncSession, app: Referrals) -> None:
        if self.referrals:
            await session.execute(_INSERT_REFERRAL, self.referrals)
            await session.execute(_INSERT_HISTORY, self.history)
            after_commit(session, OUTBOX)
            await session.execute(_INSERT_OUTBOX, self.events)
        if self.deliveries:
            await session.execute(_INSERT_DELIVERY, self.deliveries)
        if self.components:
            await session.execute(
                _SET_COMPONENT_PARTNER,
                [{"component": c, "partner": p} for c, p in self.components.items()],
            )
        if self.prepared:
            handed = list(self.prepared)

            def hand_over() -> None:
                for prepared in handed:
                    app.handoff.send(prepared)

            after_commit(session, hand_over)


def check(facts: list[Any], plan_id: str, partner_id: str, within: Scope, writes: Writes) -> None:
    """The rules of a new referral, in the order the caller hears of them."""
    head = facts[0] if facts else None
    if head is None or not within.allows(head.location_id):
        raise UnknownPlan(plan_id)
    if head.partner_id is None:
        raise UnknownPartner("partner_id", partner_id)
    if head.status != "active":
        raise PlanNotActive(head.id, head.status)
    discipline = head.partner_discipline
    if not any(f.component_discipline == discipline for f in facts):
        have = [f.component_discipline for f in facts if f.component_id is not None]
        raise DisciplineNotInPlan(head.partner_id, discipline, head.id, have)
    live = head.live_id or writes.live.get((head.id, head.partner_id, discipline))
    if live is not None:
        raise ReferralAlreadyLive(head.partner_id, live, discipline)


def add_referral(
    session: AsyncSession,
    app: Referrals,
    facts: list[Any],
    writes: Writes,
    *,
    reason: str,
    codes: list[DiagnosisCode],
    urgency: str,
    actor: str,
) -> Created:
    """Add the referral (sent at once if the client is known), its history, events and
    delivery to ``writes``; ``facts`` are :func:`read_facts`' rows, passed :func:`check`."""
    head = facts[0]
    now = app.clock()
    partner = db.Partner(id=head.partner_id, discipline=head.partner_discipline)
    client = (
        db.Client(
            id=head.known_client,
            first_name=head.first_name,
            phone=head.phone,
            sms_consent=head.sms_consent,
        )
        if head.known_client is not None
        else None
    )
    row = db.Referral(
        id=new_id(),
        plan_id=head.id,
        partner_id=head.partner_id,
        client_id=head.client_id,
        discipline=head.partner_discipline,
        reason=reason,
        diagnosis_codes=[{"code": c.code, "description": c.description} for c in codes],
        urgency=urgency,
        consent_to_share=True,
        consent_recorded_at=now,
        task_status=TaskStatus.DRAFT.value,
        status="created",
        business_status=BusinessStatus.AWAITING_CLIENT_DETAILS.value,
        status_reason=None,
        first_visit_at=None,
        report_summary=None,
        sessions_reported=None,
        issued_at=None,
        received_at=None,
        answered_at=None,
        completed_at=None,
        remind_at=None,
        expire_at=None,
        reminded_at=None,
        deadlines_scheduled=False,
        version=1,
        created_by=actor,
        created_at=now,
        updated_at=now,
    )
    history = [_history_row(row, "create", actor, now)]
    writes.events.append(_event(row, partner, client))
    deliveries: list[dict[str, Any]] = []
    if client is not None:
        # issue: the same transition ``lifecycle.issue`` makes.
        move = domain.transition(row.task_status, "issue")
        row.issued_at = now
        row.remind_at, row.expire_at = domain.answer_deadlines(
            now, app.accept_hours, app.expire_after_hours
        )
        row.task_status = move.target.value
        row.status = move.announces
        after = domain.BUSINESS_STATUS_AFTER["issue"]
        row.business_status = after.value if after is not None else None
        row.version += 1
        history.append(_history_row(row, "issue", actor, now))
        writes.events.append(_event(row, partner, client))
        after_commit(session, DEADLINES)
        if head.webhook_url:
            lease = app.handoff.lease_seconds() if not head.scores else None
            delivery = {
                "id": new_id(),
                "referral_id": row.id,
                "partner_id": head.partner_id,
                "kind": "requested",
                "status": "pending",
                "attempts": 0 if lease is None else 1,
                "next_attempt_at": now if lease is None else now + timedelta(seconds=lease),
                "last_attempt_at": None if lease is None else now,
                "deadline_at": now + timedelta(hours=app.webhook_retry_hours),
                "created_at": now,
            }
            deliveries.append(delivery)
            if lease is None:
                after_commit(session, DISPATCHER)
            else:
                writes.prepared.append(
                    PreparedWebhook(
                        delivery_id=delivery["id"],
                        referral_id=row.id,
                        kind="requested",
                        url=head.webhook_url,
                        secret_sealed=head.webhook_secret_sealed,
                        snapshot=_snapshot(row, facts, codes),
                    )
                )
    writes.referrals.append({k: getattr(row, k) for k in _REFERRAL_COLUMNS})
    writes.history.extend(history)
    writes.deliveries.extend(deliveries)
    writes.live[(row.plan_id, row.partner_id, row.discipline)] = row.id
    component = next(f for f in facts if f.component_discipline == head.partner_discipline)
    if (
        component.component_partner != head.partner_id
        or component.component_id in writes.components
    ):
        writes.components[component.component_id] = head.partner_id
    return Created(
        referral=row,
        history=[db.ReferralHistory(**h) for h in history],
        deliveries=[db.Delivery(**d) for d in deliveries],
    )


def _snapshot(
    row: db.Referral, facts: list[Any], codes: list[DiagnosisCode]
) -> fhir.ReferralSnapshot:
    head = facts[0]
    return fhir.ReferralSnapshot(
        id=row.id,
        client_id=row.client_id,
        partner_id=row.partner_id,
        partner_name=head.partner_name,
        discipline=row.discipline,
        task_status=row.task_status,
        business_status=row.business_status,
        status_reason=None,
        urgency=row.urgency,
        reason=row.reason,
        codes=tuple(codes),
        patient=fhir.PatientDetails(
            id=head.known_client,
            first_name=head.first_name,
            last_name=head.last_name,
            date_of_birth=head.date_of_birth,
            phone=head.phone,
        ),
        plan=fhir.PlanSummary(
            id=head.id,
            goals=head.goals,
            baseline_pain_score=head.baseline_pain_score,
            components=tuple(
                fhir.PlanComponentSummary(f.component_discipline, f.sessions, f.per_week)
                for f in facts
                if f.component_id is not None
            ),
        ),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
