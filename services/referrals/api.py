"""Referrals' HTTP routes: the clinic's API, the partner API and the FHIR R4 views.

Parse, authorize, call a use case, shape the answer. Domain failures become HTTP statuses
here and nowhere else.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from services.referrals import db, domain, fhir, usecases
from services.referrals.domain import BusinessStatus
from services.referrals.schemas import (
    AcceptIn,
    ApiKeyIn,
    ApiKeyOut,
    CancelIn,
    CodeOut,
    CompleteIn,
    ComponentOut,
    DeclineIn,
    DeliveryOut,
    HistoryOut,
    KnownClientOut,
    NoShowIn,
    NoteIn,
    PartnerCreatedOut,
    PartnerIn,
    PartnerOut,
    PartnerReferralOut,
    PatientOut,
    PlanIn,
    PlanOut,
    PlanSummaryOut,
    ReferralIn,
    ReferralOut,
    ReportOut,
    ScheduleIn,
)
from shared.auth import Principal
from shared.phones import InvalidPhone

ERROR_STATUS: dict[type[Exception], int] = {
    usecases.NotFound: 404,
    usecases.InvalidRequest: 422,
    usecases.Conflict: 409,
    domain.IllegalTransition: 409,
    InvalidPhone: 422,
}


def install_error_handlers(app: FastAPI) -> None:
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        status = next(code for kind, code in ERROR_STATUS.items() if isinstance(exc, kind))
        body: dict[str, Any] = {"detail": str(exc), "error": type(exc).__name__}
        if isinstance(exc, usecases.InvalidRequest):
            body["field"] = exc.field
        elif isinstance(exc, InvalidPhone):
            body["field"] = "phone"
        return JSONResponse(body, status_code=status)

    for kind in ERROR_STATUS:
        app.add_exception_handler(kind, handle)


# -- shaping ------------------------------------------------------------------------------


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


def plan_out(row: db.Plan) -> PlanOut:
    progress = usecases.plan_progress(row)
    return PlanOut(
        id=row.id,
        client_id=row.client_id,
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


def referral_out(record: usecases.ReferralRecord, base_url: str) -> ReferralOut:
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


def partner_referral_out(record: usecases.ReferralRecord, base_url: str) -> PartnerReferralOut:
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


# -- the clinic's API -------------------------------------------------------------------------


def build_router(app: usecases.Referrals, authenticate: Any) -> APIRouter:
    router = APIRouter(prefix="/v1")
    Caller = Annotated[Principal, Depends(authenticate)]
    base_url = app.base_url

    def clinic(caller: Principal) -> None:
        caller.require_role("admin", "front_desk")

    @router.post("/partners", status_code=201, response_model=PartnerCreatedOut, tags=["partners"])
    async def create_partner(body: PartnerIn, caller: Caller) -> PartnerCreatedOut:
        caller.require_role("admin")
        partner, api_key, secret = await usecases.create_partner(app, body)
        return PartnerCreatedOut(
            **partner_out(partner).model_dump(), api_key=api_key, webhook_secret=secret
        )

    @router.get("/partners", response_model=list[PartnerOut], tags=["partners"])
    async def list_partners(
        caller: Caller, discipline: str | None = None, location_id: str | None = None
    ) -> list[PartnerOut]:
        clinic(caller)
        return [partner_out(p) for p in await usecases.list_partners(app, discipline, location_id)]

    @router.get("/partners/{partner_id}", response_model=PartnerOut, tags=["partners"])
    async def get_partner(partner_id: str, caller: Caller) -> PartnerOut:
        if caller.role == "partner" and caller.partner_id == partner_id:
            return partner_out(await usecases.get_partner(app, partner_id))
        clinic(caller)
        return partner_out(await usecases.get_partner(app, partner_id))

    @router.post("/plans", status_code=201, response_model=PlanOut, tags=["plans"])
    async def create_plan(body: PlanIn, caller: Caller) -> PlanOut:
        clinic(caller)
        return plan_out(await usecases.create_plan(app, body))

    @router.get("/plans", response_model=list[PlanOut], tags=["plans"])
    async def list_plans(
        caller: Caller,
        client_id: str | None = None,
        status: str | None = None,
        limit: int = Query(100, ge=1, le=500),
        offset: int = Query(0, ge=0, le=1_000_000),
    ) -> list[PlanOut]:
        clinic(caller)
        return [
            plan_out(p) for p in await usecases.list_plans(app, client_id, status, limit, offset)
        ]

    @router.get("/plans/{plan_id}", response_model=PlanOut, tags=["plans"])
    async def get_plan(plan_id: str, caller: Caller) -> PlanOut:
        clinic(caller)
        return plan_out(await usecases.get_plan(app, plan_id))

    @router.post("/referrals", status_code=201, response_model=ReferralOut, tags=["referrals"])
    async def create_referral(body: ReferralIn, caller: Caller) -> ReferralOut:
        clinic(caller)
        return referral_out(
            await usecases.create_referral(app, body, actor=caller.key_id), base_url
        )

    @router.get("/referrals", response_model=list[ReferralOut], tags=["referrals"])
    async def list_referrals(
        caller: Caller,
        plan_id: str | None = None,
        partner_id: str | None = None,
        client_id: str | None = None,
        status: str | None = None,
        limit: int = Query(100, ge=1, le=500),
        offset: int = Query(0, ge=0, le=1_000_000),
    ) -> list[ReferralOut]:
        clinic(caller)
        records = await usecases.list_referrals(
            app,
            plan_id=plan_id,
            partner_id=partner_id,
            client_id=client_id,
            status=status,
            limit=limit,
            offset=offset,
        )
        return [referral_out(r, base_url) for r in records]

    @router.get("/referrals/{referral_id}", response_model=ReferralOut, tags=["referrals"])
    async def get_referral(referral_id: str, caller: Caller) -> ReferralOut:
        clinic(caller)
        return referral_out(await usecases.get_referral(app, referral_id), base_url)

    @router.post("/referrals/{referral_id}/cancel", response_model=ReferralOut, tags=["referrals"])
    async def cancel_referral(referral_id: str, body: CancelIn, caller: Caller) -> ReferralOut:
        clinic(caller)
        await usecases.cancel_referral(app, referral_id, body.reason, actor=caller.key_id)
        return referral_out(await usecases.get_referral(app, referral_id), base_url)

    @router.get("/referrals/{referral_id}/report.pdf", tags=["referrals"])
    async def report_pdf(referral_id: str, caller: Caller) -> Response:
        pdf = await usecases.report_pdf(app, referral_id, caller)
        return Response(pdf, media_type="application/pdf")

    @router.post("/api-keys", status_code=201, response_model=ApiKeyOut, tags=["auth"])
    async def issue_key(body: ApiKeyIn, caller: Caller) -> ApiKeyOut:
        """A key for this service (each service keeps its own keys; partners get theirs
        with ``POST /v1/partners``)."""
        caller.require_role("admin")
        key_id, key = await usecases.issue_api_key(app, body.name, body.role, body.location_ids)
        return ApiKeyOut(
            id=key_id, name=body.name, role=body.role, location_ids=body.location_ids, api_key=key
        )

    @router.get("/clients/{client_id}", response_model=KnownClientOut, tags=["clients"])
    async def known_client(client_id: str, caller: Caller) -> KnownClientOut:
        """What booking's events told referrals about a client (a referral waits in draft
        until they have)."""
        clinic(caller)
        row = await usecases.known_client(app, client_id)
        return KnownClientOut(
            id=row.id,
            first_name=row.first_name,
            last_name=row.last_name,
            date_of_birth=row.date_of_birth,
            phone=row.phone,
            sms_consent=row.sms_consent,
            updated_at=row.updated_at,
        )

    return router


# -- the partner API ----------------------------------------------------------------------


def build_partner_router(app: usecases.Referrals, authenticate: Any) -> APIRouter:
    router = APIRouter(prefix="/v1/partner", tags=["partner API"])
    base_url = app.base_url

    async def partner_of(caller: Annotated[Principal, Depends(authenticate)]) -> str:
        caller.require_role("partner")
        assert caller.partner_id is not None, "a partner key names its partner"
        return caller.partner_id

    Partner = Annotated[str, Depends(partner_of)]

    def shaped(record: usecases.ReferralRecord) -> PartnerReferralOut:
        return partner_referral_out(record, base_url)

    @router.get("/referrals", response_model=list[PartnerReferralOut])
    async def my_referrals(
        partner_id: Partner,
        status: str | None = None,
        limit: int = Query(100, ge=1, le=500),
        offset: int = Query(0, ge=0, le=1_000_000),
    ) -> list[PartnerReferralOut]:
        """Your referrals, newest first; reading one tells the clinic you received it."""
        records = await usecases.partner_referrals(app, partner_id, status, limit, offset)
        return [shaped(r) for r in records]

    @router.get("/referrals/{referral_id}", response_model=PartnerReferralOut)
    async def my_referral(referral_id: str, partner_id: Partner) -> PartnerReferralOut:
        return shaped(await usecases.partner_referral(app, partner_id, referral_id))

    @router.post("/referrals/{referral_id}/accept", response_model=PartnerReferralOut)
    async def accept(
        referral_id: str, partner_id: Partner, body: AcceptIn | None = None
    ) -> PartnerReferralOut:
        note = body.note if body else None
        return shaped(await usecases.accept(app, partner_id, referral_id, note))

    @router.post("/referrals/{referral_id}/decline", response_model=PartnerReferralOut)
    async def decline(referral_id: str, body: DeclineIn, partner_id: Partner) -> PartnerReferralOut:
        return shaped(await usecases.decline(app, partner_id, referral_id, body.reason))

    @router.post("/referrals/{referral_id}/schedule", response_model=PartnerReferralOut)
    async def schedule(
        referral_id: str, body: ScheduleIn, partner_id: Partner
    ) -> PartnerReferralOut:
        """The first visit is booked (again, to move it)."""
        return shaped(await usecases.schedule(app, partner_id, referral_id, body.start, body.note))

    @router.post("/referrals/{referral_id}/complete", response_model=PartnerReferralOut)
    async def complete(
        referral_id: str, body: CompleteIn, partner_id: Partner
    ) -> PartnerReferralOut:
        """Done: the outcome report (summary, sessions, optional PDF)."""
        return shaped(
            await usecases.complete(
                app,
                partner_id,
                referral_id,
                body.summary,
                body.sessions_completed,
                body.pdf_bytes(),
            )
        )

    @router.post("/referrals/{referral_id}/no-show", response_model=PartnerReferralOut)
    async def no_show(
        referral_id: str, partner_id: Partner, body: NoShowIn | None = None
    ) -> PartnerReferralOut:
        note = body.note if body else None
        return shaped(
            await usecases.report(app, partner_id, referral_id, BusinessStatus.NO_SHOW, note)
        )

    @router.post("/referrals/{referral_id}/notes", response_model=PartnerReferralOut)
    async def interim_note(
        referral_id: str, body: NoteIn, partner_id: Partner
    ) -> PartnerReferralOut:
        """An interim note; ``sessions_completed`` moves your part of the care plan."""
        return shaped(
            await usecases.report(
                app,
                partner_id,
                referral_id,
                BusinessStatus.INTERIM_NOTE,
                body.text,
                body.sessions_completed,
            )
        )

    return router


# -- FHIR R4 views ------------------------------------------------------------------------


def build_fhir_router(app: usecases.Referrals, authenticate: Any) -> APIRouter:
    router = APIRouter(prefix="/fhir/R4", tags=["FHIR R4"])
    Caller = Annotated[Principal, Depends(authenticate)]

    def fhir_json(resource: dict[str, Any]) -> Response:
        return Response(fhir.to_bytes(resource), media_type=fhir.FHIR_JSON)

    @router.get("/ServiceRequest/{referral_id}")
    async def service_request(referral_id: str, caller: Caller) -> Response:
        record = await usecases.viewable_referral(app, referral_id, caller)
        return fhir_json(fhir.service_request(record.snapshot(), app.clinic_name))

    @router.get("/Task/{referral_id}")
    async def task(referral_id: str, caller: Caller) -> Response:
        record = await usecases.viewable_referral(app, referral_id, caller)
        return fhir_json(fhir.task(record.snapshot(), app.clinic_name, app.base_url))

    @router.get("/Patient/{client_id}")
    async def patient(client_id: str, caller: Caller) -> Response:
        """The minimal Patient the Bundles point at: name, date of birth, phone."""
        row = await usecases.viewable_client(app, client_id, caller)
        return fhir_json(
            fhir.patient(
                fhir.PatientDetails(
                    id=row.id,
                    first_name=row.first_name,
                    last_name=row.last_name,
                    date_of_birth=row.date_of_birth,
                    phone=row.phone,
                )
            )
        )

    return router
