"""The FHIR R4 resources a referral becomes, validated by fhir.resources.R4B."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task
from pydantic import ValidationError

from services.referrals import fhir
from services.referrals.codes import DiagnosisCode
from services.referrals.domain import TaskStatus

AT = datetime(2026, 3, 8, 15, 30, tzinfo=UTC)
BASE = "https://referrals.clinic.example"


def snapshot(**changes: object) -> fhir.ReferralSnapshot:
    values: dict[str, object] = {
        "id": "5f0c2a9e-4c5b-4b8e-9d1e-0a1b2c3d4e5f",
        "client_id": "c1a2b3c4-0000-4000-8000-000000000001",
        "partner_id": "p1",
        "partner_name": "Riverside Physical Therapy",
        "discipline": "physical_therapy",
        "task_status": "requested",
        "business_status": None,
        "status_reason": None,
        "urgency": "urgent",
        "reason": "Low back pain after lifting",
        "codes": (DiagnosisCode("M54.50", "Low back pain, unspecified"),),
        "patient": fhir.PatientDetails(
            "c1a2b3c4-0000-4000-8000-000000000001",
            "Maria",
            "Lopez",
            date(1980, 2, 3),
            "+12125550199",
        ),
        "plan": fhir.PlanSummary(
            "plan-1",
            "Garden again",
            7,
            (
                fhir.PlanComponentSummary("massage", 8, 1),
                fhir.PlanComponentSummary("physical_therapy", 6, 2),
            ),
        ),
        "created_at": AT,
        "updated_at": AT,
    }
    values.update(changes)
    return fhir.ReferralSnapshot(**values)  # type: ignore[arg-type]


def test_the_service_request_carries_codes_priority_timing_and_the_plan() -> None:
    resource = fhir.service_request(snapshot(), "Clinic")
    request = ServiceRequest.model_validate(resource)
    assert request.status == "active" and request.intent == "order"
    assert request.priority == "urgent"
    coding = request.reasonCode[0].coding[0]
    assert (coding.system, coding.code) == ("http://hl7.org/fhir/sid/icd-10-cm", "M54.50")
    timing = request.occurrenceTiming.repeat
    assert (timing.count, timing.frequency, timing.period, timing.periodUnit) == (6, 2, 1, "wk")
    assert "Garden again" in json.dumps(resource) and "Baseline pain 7/10" in json.dumps(resource)
    assert request.subject.reference == "Patient/c1a2b3c4-0000-4000-8000-000000000001"


@pytest.mark.parametrize(
    ("status", "request_status"),
    [
        ("draft", "draft"),
        ("received", "active"),
        ("in-progress", "active"),
        ("completed", "completed"),
        ("rejected", "revoked"),
        ("cancelled", "revoked"),
        ("failed", "revoked"),
    ],
)
def test_the_request_status_follows_the_task(status: str, request_status: str) -> None:
    assert fhir.service_request(snapshot(task_status=status), "C")["status"] == request_status


def test_the_task_shows_business_status_visit_notes_and_the_report() -> None:
    resource = fhir.task(
        snapshot(
            task_status="completed",
            business_status=None,
            first_visit_at=AT + timedelta(days=2),
            completed_at=AT + timedelta(days=30),
            report_summary="Pain 3/10",
            report_pdf_size=1234,
            notes=(fhir.TaskNote(AT + timedelta(days=9), "interim-note: better"),),
        ),
        "Clinic",
        BASE,
    )
    task = Task.model_validate(resource)
    assert task.status == "completed" and task.intent == "order"
    assert task.focus.reference == f"ServiceRequest/{resource['id']}"
    assert task.executionPeriod.start == AT + timedelta(days=2)
    assert [o.valueString for o in task.output if o.valueString] == ["Pain 3/10"]
    attachment = next(o.valueAttachment for o in task.output if o.valueAttachment)
    assert attachment.url == f"{BASE}/v1/referrals/{resource['id']}/report.pdf"
    assert task.note[0].text == "interim-note: better"


def test_every_task_status_of_our_enum_builds_a_valid_task() -> None:
    for status in TaskStatus:
        assert Task.model_validate(fhir.task(snapshot(task_status=status.value), "C", BASE))


def test_the_bundle_is_a_collection_whose_references_resolve_inside_it() -> None:
    resource = fhir.bundle(
        snapshot(), bundle_id="d-1", timestamp=AT, clinic_name="Clinic", base_url=BASE
    )
    bundle = Bundle.model_validate(resource)
    assert bundle.type == "collection" and bundle.id == "d-1"
    urls = {e.fullUrl for e in bundle.entry}
    request = bundle.entry[0].resource
    assert f"{BASE}/fhir/R4/{request.subject.reference}" in urls
    assert f"{BASE}/fhir/R4/{bundle.entry[1].resource.focus.reference}" in urls
    patient = bundle.entry[2].resource
    assert patient.telecom[0].value == "+12125550199"
    assert {k for k in resource["entry"][2]["resource"]} == {
        "resourceType",
        "id",
        "name",
        "telecom",
        "birthDate",
    }


def test_no_bundle_before_the_client_details_are_known() -> None:
    with pytest.raises(ValueError, match="client"):
        fhir.bundle(
            snapshot(patient=None), bundle_id="x", timestamp=AT, clinic_name="C", base_url=BASE
        )


def test_r4b_is_what_validates_our_json() -> None:
    # The package's default (R5) Task refuses R4-shaped JSON; our resources are R4.
    from fhir.resources.task import Task as R5Task

    resource = fhir.task(snapshot(first_visit_at=AT), "C", BASE)
    Task.model_validate(resource)
    r4_only = {**resource, "code": {"coding": [{"code": "fulfill"}]}, "reasonCode": {"text": "x"}}
    with pytest.raises(ValidationError):
        R5Task.model_validate(r4_only)
