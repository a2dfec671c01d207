"""The HTTP API's request and response bodies: what the outside sees of referrals."""

from __future__ import annotations

import base64
import binascii
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, EmailStr, Field, HttpUrl, field_validator

from services.referrals.domain import PartnerDiscipline, PlanDiscipline, Urgency
from shared.validation import Instant, Name

#: An outcome report's PDF may be this large (decoded).
MAX_PDF_BYTES = 5 * 1024 * 1024


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- partners -------------------------------------------------------------------------


class PartnerIn(Strict):
    name: Name = Field(min_length=1, max_length=200)
    discipline: PartnerDiscipline
    phone: str = Field(description="E.164, or national in the clinic's default region")
    email: EmailStr
    location_ids: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=100, description="booking locations this partner serves"
    )
    webhook_url: HttpUrl | None = Field(
        default=None, description="where referrals are POSTed as signed FHIR Bundles"
    )

    @field_validator("webhook_url")
    @classmethod
    def _short_enough(cls, value: HttpUrl | None) -> HttpUrl | None:
        if value is not None and len(str(value)) > 2000:
            raise ValueError("longer than 2000 characters")
        return value


class PartnerOut(BaseModel):
    id: str
    name: str
    discipline: str
    phone: str
    email: str
    location_ids: list[str]
    webhook_url: str | None
    created_at: datetime


class PartnerCreatedOut(PartnerOut):
    api_key: str = Field(description="the partner's API key: shown this once, stored hashed")
    webhook_secret: str = Field(
        description="signs X-Referral-Signature: shown this once, stored encrypted"
    )


class PartnerKeyOut(BaseModel):
    partner_id: str
    api_key: str = Field(description="the new key, shown this once; the old one ended")


class PartnerSecretOut(BaseModel):
    partner_id: str
    webhook_secret: str = Field(description="the new secret, shown this once; the old one ended")


# -- plans ----------------------------------------------------------------------------


class ComponentIn(Strict):
    discipline: PlanDiscipline
    sessions: int = Field(ge=1, le=200)
    per_week: int = Field(ge=1, le=14)
    partner_id: str | None = None


class PlanIn(Strict):
    client_id: str = Field(min_length=1, max_length=64)
    location_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=36,
        description="the booking location running the plan; its front desk sees the plan "
        "and its referrals (a front-desk key with one location defaults to it)",
    )
    goals: str = Field(min_length=1, max_length=4000)
    baseline_pain_score: int | None = Field(default=None, ge=0, le=10)
    components: list[ComponentIn] = Field(min_length=1, max_length=10)

    @field_validator("components")
    @classmethod
    def _one_per_discipline(cls, value: list[ComponentIn]) -> list[ComponentIn]:
        seen: set[str] = set()
        for component in value:
            if component.discipline in seen:
                raise ValueError(f"two components for {component.discipline}: give one")
            seen.add(component.discipline)
        return value


class ComponentOut(BaseModel):
    discipline: str
    sessions: int
    per_week: int
    partner_id: str | None
    completed: int
    no_shows: int
    done: bool


class OutcomeOut(BaseModel):
    """A check-in answer: how the client felt after a session, 0-10 (lower is less pain)."""

    session_id: str
    score: int
    answered_at: datetime


class OutcomeSummaryOut(BaseModel):
    """The trend beside the baseline: the latest score and its change from the baseline
    (negative: less pain than when the plan was made); null where there is nothing to
    compare."""

    baseline_pain_score: int | None
    latest: int | None
    change_from_baseline: int | None
    count: int


class PlanOut(BaseModel):
    id: str
    client_id: str
    location_id: str | None
    goals: str
    baseline_pain_score: int | None
    status: str
    version: int
    components: list[ComponentOut]
    progress: dict[str, Any]
    outcomes: list[OutcomeOut] = Field(
        description="check-in scores recorded toward this plan, oldest first"
    )
    outcome_summary: OutcomeSummaryOut
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


# -- referrals ------------------------------------------------------------------------


class ReferralIn(Strict):
    plan_id: str
    partner_id: str
    reason: str = Field(min_length=1, max_length=4000)
    diagnosis_codes: list[Annotated[str, Field(max_length=16)]] = Field(
        min_length=1, max_length=12, examples=[["M54.50"]]
    )
    urgency: Urgency = "routine"
    consent_to_share: bool = Field(
        description="the client agreed that their name, date of birth, phone and this "
        "referral go to the partner; required to be true"
    )

    @field_validator("consent_to_share")
    @classmethod
    def _consented(cls, value: bool) -> bool:
        if not value:
            raise ValueError(
                "the client must consent to sharing their details with the partner "
                "before a referral is made"
            )
        return value


class CodeOut(BaseModel):
    code: str
    description: str


class HistoryOut(BaseModel):
    at: datetime
    action: str
    task_status: str
    business_status: str | None
    note: str | None
    actor: str


class DeliveryOut(BaseModel):
    id: str
    kind: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    deadline_at: datetime
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None


class ReportOut(BaseModel):
    summary: str
    sessions_completed: int | None
    pdf_url: str | None


class ReferralOut(BaseModel):
    id: str
    plan_id: str
    partner_id: str
    client_id: str
    discipline: str
    status: str = Field(description="the last lifecycle event: created, sent, received, …")
    task_status: str = Field(description="FHIR Task.status")
    business_status: str | None
    status_reason: str | None
    urgency: str
    reason: str
    diagnosis_codes: list[CodeOut]
    consent_to_share: bool
    first_visit_at: datetime | None
    report: ReportOut | None
    issued_at: datetime | None
    received_at: datetime | None
    remind_at: datetime | None
    respond_by: datetime | None
    reminded_at: datetime | None
    completed_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime
    history: list[HistoryOut] = Field(default_factory=list)
    deliveries: list[DeliveryOut] = Field(default_factory=list)


class CancelIn(Strict):
    reason: str = Field(min_length=1, max_length=2000)


class KnownClientOut(BaseModel):
    """What referrals learned about a client from booking's events."""

    id: str
    first_name: str
    last_name: str
    date_of_birth: date | None
    phone: str
    sms_consent: bool
    updated_at: datetime


# -- the partner API --------------------------------------------------------------------


class PatientOut(BaseModel):
    first_name: str
    last_name: str
    date_of_birth: date | None
    phone: str


class PlanSummaryOut(BaseModel):
    goals: str
    baseline_pain_score: int | None
    components: list[dict[str, Any]]
    outcomes: list[OutcomeOut]
    outcome_summary: OutcomeSummaryOut


class PartnerReferralOut(BaseModel):
    """A referral as its partner sees it: what it needs to act, nothing more."""

    id: str
    discipline: str
    status: str
    task_status: str
    business_status: str | None
    urgency: str
    reason: str
    diagnosis_codes: list[CodeOut]
    patient: PatientOut
    plan: PlanSummaryOut
    sessions: int | None
    per_week: int | None
    sent_at: datetime | None
    respond_by: datetime | None
    first_visit_at: datetime | None
    report: ReportOut | None
    fhir_service_request: str
    fhir_task: str


class AcceptIn(Strict):
    note: str | None = Field(default=None, max_length=2000)


class DeclineIn(Strict):
    reason: str = Field(min_length=1, max_length=2000)


class ScheduleIn(Strict):
    start: Instant = Field(description="the first visit, with its UTC offset")
    note: str | None = Field(default=None, max_length=2000)


class CompleteIn(Strict):
    summary: str = Field(min_length=1, max_length=20000, description="the outcome report")
    sessions_completed: int | None = Field(default=None, ge=0, le=500)
    report_pdf_base64: str | None = Field(default=None, description="optional PDF, base64")

    @field_validator("report_pdf_base64")
    @classmethod
    def _pdf(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("not valid base64") from exc
        if not raw.startswith(b"%PDF-"):
            raise ValueError("not a PDF (it must start with %PDF-)")
        if len(raw) > MAX_PDF_BYTES:
            raise ValueError(f"larger than {MAX_PDF_BYTES // (1024 * 1024)} MB")
        return value

    def pdf_bytes(self) -> bytes | None:
        return base64.b64decode(self.report_pdf_base64) if self.report_pdf_base64 else None


class NoShowIn(Strict):
    note: str | None = Field(default=None, max_length=2000)


class NoteIn(Strict):
    text: str = Field(min_length=1, max_length=4000)
    sessions_completed: int | None = Field(
        default=None, ge=0, le=500, description="visits so far, counted toward the plan"
    )
