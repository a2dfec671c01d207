"""What the HTTP answers look like: rows and records shaped into the response models."""

from __future__ import annotations

from services.referrals import db, domain
from services.referrals.queries import ReferralRecord, plan_progress
from services.referrals.schemas import (
    CodeOut,
    ComponentOut,
    DeliveryOut,
    HistoryOut,
    OutcomeOut,
    OutcomeSummaryOut,
    PartnerOut,
    PartnerReferralOut,
    PatientOut,
    PlanOut,
    PlanSummaryOut,
    ReferralOut,
    ReportOut,
)
from services.referrals.usecases.creating import Created


def partner_out(row: db.Partner) -> PartnerOut:
    return PartnerOut(
        id=row.id,
        name=row.name,
        discipline=row.discipline,
        phone=row.phone,
        email=row.email,
        location_ids=list(row.location_ids or []),
        webhook_url=row.webhook_url,
        created_at=row.created_at,
    )


def outcomes_out(row: db.Plan) -> list[OutcomeOut]:
    return [
        OutcomeOut(session_id=o.session_id, score=o.score, answered_at=o.answered_at)
        for o in row.outcomes
    ]


def outcome_summary_out(row: db.Plan) -> OutcomeSummaryOut:
    summary = domain.outcome_summary(row.baseline_pain_score, [o.score for o in row.outcomes])
    return OutcomeSummaryOut(
        baseline_pain_score=summary.baseline_pain_score,
        latest=summary.latest,
        change_from_baseline=summary.change_from_baseline,
        count=summary.count,
    )


def plan_out(row: db.Plan) -> PlanOut:
    progress = plan_progress(row)
    return PlanOut(
        id=row.id,
        client_id=row.client_id,
        location_id=row.location_id,
        goals=row.goals,
        baseline_pain_score=row.baseline_pain_score,
        status=row.status,
        version=row.version,
        components=[
            ComponentOut(
                discipline=c["discipline"],
                sessions=c["sessions"],
                per_week=c["per_week"],
                partner_id=c["partner_id"],
                completed=c["completed"],
                no_shows=c["no_shows"],
                done=c["done"],
            )
            for c in progress["components"]
        ],
        progress=progress,
        outcomes=outcomes_out(row),
        outcome_summary=outcome_summary_out(row),
        created_at=row.created_at,
        updated_at=row.updated_at,
        completed_at=row.completed_at,
    )


def _report(row: db.Referral, base_url: str) -> ReportOut | None:
    if row.report_summary is None:
        return None
    return ReportOut(
        summary=row.report_summary,
        sessions_completed=row.sessions_reported,
        pdf_url=f"{base_url}/v1/referrals/{row.id}/report.pdf" if db.pdf_size(row) else None,
    )


def _codes(row: db.Referral) -> list[CodeOut]:
    return [CodeOut(code=c["code"], description=c["description"]) for c in row.diagnosis_codes]


def referral_out(record: ReferralRecord | Created, base_url: str) -> ReferralOut:
    """A referral with its history and deliveries (a stored one, or one just created)."""
    r = record.referral
    return ReferralOut(
        id=r.id,
        plan_id=r.plan_id,
        partner_id=r.partner_id,
        client_id=r.client_id,
        discipline=r.discipline,
        status=r.status,
        task_status=r.task_status,
        business_status=r.business_status,
        status_reason=r.status_reason,
        urgency=r.urgency,
        reason=r.reason,
        diagnosis_codes=_codes(r),
        consent_to_share=r.consent_to_share,
        first_visit_at=r.first_visit_at,
        report=_report(r, base_url),
        issued_at=r.issued_at,
        received_at=r.received_at,
        remind_at=r.remind_at,
        respond_by=r.expire_at,
        reminded_at=r.reminded_at,
        completed_at=r.completed_at,
        version=r.version,
        created_at=r.created_at,
        updated_at=r.updated_at,
        history=[
            HistoryOut(
                at=h.at,
                action=h.action,
                task_status=h.task_status,
                business_status=h.business_status,
                note=h.note,
                actor=h.actor,
            )
            for h in record.history
        ],
        deliveries=[
            DeliveryOut(
                id=d.id,
                kind=d.kind,
                status=d.status,
                attempts=d.attempts,
                next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
                deadline_at=d.deadline_at,
                delivered_at=d.delivered_at,
                last_status_code=d.last_status_code,
                last_error=d.last_error,
            )
            for d in record.deliveries
        ],
    )


def partner_referral_out(record: ReferralRecord, base_url: str) -> PartnerReferralOut:
    r, client, plan = record.referral, record.client, record.plan
    assert client is not None, "a sent referral has its client's details"
    component = next((c for c in plan.components if c.discipline == r.discipline), None)
    return PartnerReferralOut(
        id=r.id,
        discipline=r.discipline,
        status=r.status,
        task_status=r.task_status,
        business_status=r.business_status,
        urgency=r.urgency,
        reason=r.reason,
        diagnosis_codes=_codes(r),
        patient=PatientOut(
            first_name=client.first_name,
            last_name=client.last_name,
            date_of_birth=client.date_of_birth,
            phone=client.phone,
        ),
        plan=PlanSummaryOut(
            goals=plan.goals,
            baseline_pain_score=plan.baseline_pain_score,
            components=[
                {"discipline": c.discipline, "sessions": c.sessions, "per_week": c.per_week}
                for c in plan.components
            ],
            outcomes=outcomes_out(plan),
            outcome_summary=outcome_summary_out(plan),
        ),
        sessions=component.sessions if component else None,
        per_week=component.per_week if component else None,
        sent_at=r.issued_at,
        respond_by=r.expire_at if r.task_status in domain.AWAITING_ANSWER else None,
        first_visit_at=r.first_visit_at,
        report=_report(r, base_url),
        fhir_service_request=f"{base_url}/fhir/R4/ServiceRequest/{r.id}",
        fhir_task=f"{base_url}/fhir/R4/Task/{r.id}",
    )
