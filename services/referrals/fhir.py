"""FHIR R4 views of a referral: ServiceRequest, Task, a minimal Patient, and the webhook Bundle
(with the plan's pain scores as Observations, ``services.referrals.observations``).

Built as plain JSON, then validated through ``fhir.resources.R4B`` (R4 lives there; the
package's default classes are R5 and refuse R4-shaped JSON); the webhook Bundle once per
shape (``fhir_check``). What leaves for a partner is
only what it needs: the client's name, date of birth and phone, the reason, the codes and
the plan's summary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from services.referrals.codes import ICD10_CM_SYSTEM, DiagnosisCode
from services.referrals.domain import TaskStatus
from services.referrals.fhir_check import ShapeValidator
from services.referrals.observations import PainScore, observation_json

#: Our own code systems and identifier namespaces.
NAMESPACE = "https://clinic-backbone.example/fhir"
DISCIPLINE_SYSTEM = f"{NAMESPACE}/CodeSystem/referral-discipline"
BUSINESS_STATUS_SYSTEM = f"{NAMESPACE}/CodeSystem/referral-business-status"
REFERRAL_IDENTIFIER = f"{NAMESPACE}/identifier/referral"
PLAN_IDENTIFIER = f"{NAMESPACE}/identifier/care-plan"
PARTNER_IDENTIFIER = f"{NAMESPACE}/identifier/partner"
TASK_CODE_SYSTEM = "http://hl7.org/fhir/CodeSystem/task-code"
FHIR_JSON = "application/fhir+json"

DISCIPLINE_NAMES = {
    "massage": "Medical massage",
    "physical_therapy": "Physical therapy",
    "acupuncture": "Acupuncture",
    "chiropractic": "Chiropractic",
    "other": "Other therapy",
}

#: ServiceRequest.status follows the Task: the request is active while the Task is open.
_REQUEST_STATUS = {
    TaskStatus.DRAFT: "draft",
    TaskStatus.REQUESTED: "active",
    TaskStatus.RECEIVED: "active",
    TaskStatus.ACCEPTED: "active",
    TaskStatus.READY: "active",
    TaskStatus.IN_PROGRESS: "active",
    TaskStatus.ON_HOLD: "on-hold",
    TaskStatus.COMPLETED: "completed",
    TaskStatus.REJECTED: "revoked",
    TaskStatus.CANCELLED: "revoked",
    TaskStatus.FAILED: "revoked",
    TaskStatus.ENTERED_IN_ERROR: "entered-in-error",
}


@dataclass(frozen=True)
class PatientDetails:
    id: str
    first_name: str
    last_name: str
    date_of_birth: date | None
    phone: str


@dataclass(frozen=True)
class PlanComponentSummary:
    discipline: str
    sessions: int
    per_week: int


@dataclass(frozen=True)
class PlanSummary:
    id: str
    goals: str
    baseline_pain_score: int | None
    components: tuple[PlanComponentSummary, ...]
    #: The check-in scores recorded toward the plan, oldest first.
    outcomes: tuple[PainScore, ...] = ()

    def text(self) -> str:
        parts = [f"Care plan goals: {self.goals}"]
        if self.baseline_pain_score is not None:
            parts.append(f"Baseline pain {self.baseline_pain_score}/10")
        parts.append(
            "Components: "
            + "; ".join(
                f"{DISCIPLINE_NAMES.get(c.discipline, c.discipline)} "
                f"{c.sessions} sessions, {c.per_week}/week"
                for c in self.components
            )
        )
        return ". ".join(parts) + "."


@dataclass(frozen=True)
class TaskNote:
    at: datetime
    text: str


@dataclass(frozen=True)
class ReferralSnapshot:
    """Everything the FHIR views show of one referral, read in one transaction."""

    id: str
    client_id: str
    partner_id: str
    partner_name: str
    discipline: str
    task_status: str
    business_status: str | None
    status_reason: str | None
    urgency: str
    reason: str
    codes: tuple[DiagnosisCode, ...]
    patient: PatientDetails | None
    plan: PlanSummary
    created_at: datetime
    updated_at: datetime
    first_visit_at: datetime | None = None
    completed_at: datetime | None = None
    report_summary: str | None = None
    report_pdf_size: int | None = None
    notes: tuple[TaskNote, ...] = field(default_factory=tuple)

    @property
    def component(self) -> PlanComponentSummary | None:
        return next((c for c in self.plan.components if c.discipline == self.discipline), None)


def _instant(moment: datetime) -> str:
    return moment.isoformat()


def _partner_ref(snap: ReferralSnapshot) -> dict[str, Any]:
    return {
        "identifier": {"system": PARTNER_IDENTIFIER, "value": snap.partner_id},
        "display": snap.partner_name,
    }


def _patient_ref(snap: ReferralSnapshot) -> dict[str, Any]:
    ref: dict[str, Any] = {"reference": f"Patient/{snap.client_id}"}
    if snap.patient is not None:
        ref["display"] = f"{snap.patient.first_name} {snap.patient.last_name}"
    return ref


def _identifier(snap: ReferralSnapshot) -> list[dict[str, Any]]:
    return [{"system": REFERRAL_IDENTIFIER, "value": snap.id}]


def service_request(snap: ReferralSnapshot, clinic_name: str) -> dict[str, Any]:
    """The referral as a FHIR R4 ServiceRequest (id = the referral's id), validated."""
    from fhir.resources.R4B.servicerequest import ServiceRequest  # lazy: see observations

    return ServiceRequest.model_validate(_service_request(snap, clinic_name)).model_dump(
        mode="json"
    )


def _service_request(snap: ReferralSnapshot, clinic_name: str) -> dict[str, Any]:
    discipline = DISCIPLINE_NAMES.get(snap.discipline, snap.discipline)
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": snap.id,
        "identifier": _identifier(snap),
        "requisition": {"system": PLAN_IDENTIFIER, "value": snap.plan.id},
        "status": _REQUEST_STATUS[TaskStatus(snap.task_status)],
        "intent": "order",
        "priority": snap.urgency,
        "code": {
            "coding": [
                {"system": DISCIPLINE_SYSTEM, "code": snap.discipline, "display": discipline}
            ],
            "text": f"Referral to {discipline.lower()}",
        },
        "subject": _patient_ref(snap),
        "authoredOn": _instant(snap.created_at),
        "requester": {"display": clinic_name},
        "performer": [_partner_ref(snap)],
        "reasonCode": [
            {
                "coding": [{"system": ICD10_CM_SYSTEM, "code": c.code, "display": c.description}],
                "text": c.description,
            }
            for c in snap.codes
        ],
        "note": [
            {"text": f"Reason for referral: {snap.reason}"},
            {"text": snap.plan.text()},
        ],
    }
    component = snap.component
    if component is not None:
        resource["occurrenceTiming"] = {
            "repeat": {
                "count": component.sessions,
                "frequency": component.per_week,
                "period": 1,
                "periodUnit": "wk",
            }
        }
    return resource


def task(snap: ReferralSnapshot, clinic_name: str, base_url: str) -> dict[str, Any]:
    """The referral's lifecycle as a FHIR R4 Task focused on the ServiceRequest, validated."""
    from fhir.resources.R4B.task import Task

    return Task.model_validate(_task(snap, clinic_name, base_url)).model_dump(mode="json")


def _task(snap: ReferralSnapshot, clinic_name: str, base_url: str) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "id": snap.id,
        "identifier": _identifier(snap),
        "status": TaskStatus(snap.task_status).value,
        "intent": "order",
        "priority": snap.urgency,
        "code": {"coding": [{"system": TASK_CODE_SYSTEM, "code": "fulfill"}]},
        "focus": {"reference": f"ServiceRequest/{snap.id}"},
        "for": _patient_ref(snap),
        "authoredOn": _instant(snap.created_at),
        "lastModified": _instant(snap.updated_at),
        "requester": {"display": clinic_name},
        "owner": _partner_ref(snap),
    }
    if snap.status_reason:
        resource["statusReason"] = {"text": snap.status_reason}
    if snap.business_status:
        resource["businessStatus"] = {
            "coding": [{"system": BUSINESS_STATUS_SYSTEM, "code": snap.business_status}],
            "text": snap.business_status,
        }
    period: dict[str, str] = {}
    if snap.first_visit_at is not None:
        period["start"] = _instant(snap.first_visit_at)
    if snap.completed_at is not None:
        period["end"] = _instant(snap.completed_at)
    if period:
        resource["executionPeriod"] = period
    if snap.notes:
        resource["note"] = [{"time": _instant(n.at), "text": n.text} for n in snap.notes]
    outputs: list[dict[str, Any]] = []
    if snap.report_summary:
        outputs.append({"type": {"text": "Outcome report"}, "valueString": snap.report_summary})
    if snap.report_pdf_size:
        outputs.append(
            {
                "type": {"text": "Outcome report (PDF)"},
                "valueAttachment": {
                    "contentType": "application/pdf",
                    "url": f"{base_url}/v1/referrals/{snap.id}/report.pdf",
                    "size": snap.report_pdf_size,
                    "title": "Outcome report",
                },
            }
        )
    if outputs:
        resource["output"] = outputs
    return resource


def patient(details: PatientDetails) -> dict[str, Any]:
    """A minimal Patient: name, date of birth, phone. Nothing else leaves."""
    from fhir.resources.R4B.patient import Patient

    return Patient.model_validate(_patient(details)).model_dump(mode="json")


def _patient(details: PatientDetails) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": details.id,
        "name": [{"family": details.last_name, "given": [details.first_name]}],
        "telecom": [{"system": "phone", "value": details.phone, "use": "mobile"}],
    }
    if details.date_of_birth is not None:
        resource["birthDate"] = details.date_of_birth.isoformat()
    return resource


def bundle(
    snap: ReferralSnapshot,
    *,
    bundle_id: str,
    timestamp: datetime,
    clinic_name: str,
    base_url: str,
) -> dict[str, Any]:
    """What a partner's webhook receives: ServiceRequest, Task, Patient and the plan's pain
    scores (Observations, oldest first) in a collection.

    Full URLs are where the same resources can be read back (``/fhir/R4/…``), so the
    relative references inside (``Patient/<id>``) resolve within the Bundle. The Bundle
    is validated once, resources included.
    """
    if snap.patient is None:
        raise ValueError("a referral is sent only once the client's details are known")
    fhir_base = f"{base_url}/fhir/R4"
    observations = [
        {"fullUrl": f"{fhir_base}/Observation/{o.id}", "resource": observation_json(o)}
        for o in snap.plan.outcomes
    ]
    resource = {
        "resourceType": "Bundle",
        "id": bundle_id,
        "type": "collection",
        "timestamp": _instant(timestamp),
        "entry": [
            {
                "fullUrl": f"{fhir_base}/ServiceRequest/{snap.id}",
                "resource": _service_request(snap, clinic_name),
            },
            {
                "fullUrl": f"{fhir_base}/Task/{snap.id}",
                "resource": _task(snap, clinic_name, base_url),
            },
            {
                "fullUrl": f"{fhir_base}/Patient/{snap.client_id}",
                "resource": _patient(snap.patient),
            },
            *observations,
        ],
    }
    # Refuses what is not valid R4 (the JSON is ours as built): validated with
    # fhir.resources once per shape (``fhir_check``), not once per Bundle.
    _BUNDLES.check(resource)
    return resource


def _validate_bundle(resource: dict[str, Any]) -> None:
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(resource)


_BUNDLES = ShapeValidator(_validate_bundle)


def to_bytes(resource: dict[str, Any]) -> bytes:
    """Compact JSON, the exact bytes that are signed and sent."""
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode()
