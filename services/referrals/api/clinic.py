"""The clinic's API: partners and API keys (admin), care plans and referrals (front desk),
and what booking told us about a client."""

# No ``from __future__ import annotations``: FastAPI reads the routes' local ``Annotated``
# dependencies at run time.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from services.referrals import queries
from services.referrals.api.shapes import partner_out, plan_out, referral_out
from services.referrals.schemas import (
    ApiKeyIn,
    ApiKeyOut,
    CancelIn,
    KnownClientOut,
    PartnerCreatedOut,
    PartnerIn,
    PartnerOut,
    PlanIn,
    PlanOut,
    ReferralIn,
    ReferralOut,
)
from services.referrals.usecases import Referrals, partners, plans, referrals
from shared.auth import Principal


def build_clinic_router(app: Referrals, authenticate: Any) -> APIRouter:
    router = APIRouter(prefix="/v1")
    Caller = Annotated[Principal, Depends(authenticate)]
    base_url = app.base_url

    def clinic(caller: Principal) -> None:
        caller.require_role("admin", "front_desk")

    @router.post("/partners", status_code=201, response_model=PartnerCreatedOut, tags=["partners"])
    async def create_partner(body: PartnerIn, caller: Caller) -> PartnerCreatedOut:
        caller.require_role("admin")
        partner, api_key, secret = await partners.create_partner(app, body)
        return PartnerCreatedOut(
            **partner_out(partner).model_dump(), api_key=api_key, webhook_secret=secret
        )

    @router.get("/partners", response_model=list[PartnerOut], tags=["partners"])
    async def list_partners(
        caller: Caller, discipline: str | None = None, location_id: str | None = None
    ) -> list[PartnerOut]:
        clinic(caller)
        return [partner_out(p) for p in await queries.list_partners(app, discipline, location_id)]

    @router.get("/partners/{partner_id}", response_model=PartnerOut, tags=["partners"])
    async def get_partner(partner_id: str, caller: Caller) -> PartnerOut:
        if caller.role == "partner" and caller.partner_id == partner_id:
            return partner_out(await queries.get_partner(app, partner_id))
        clinic(caller)
        return partner_out(await queries.get_partner(app, partner_id))

    @router.post("/plans", status_code=201, response_model=PlanOut, tags=["plans"])
    async def create_plan(body: PlanIn, caller: Caller) -> PlanOut:
        clinic(caller)
        return plan_out(await plans.create_plan(app, body))

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
            plan_out(p) for p in await queries.list_plans(app, client_id, status, limit, offset)
        ]

    @router.get("/plans/{plan_id}", response_model=PlanOut, tags=["plans"])
    async def get_plan(plan_id: str, caller: Caller) -> PlanOut:
        clinic(caller)
        return plan_out(await queries.get_plan(app, plan_id))

    @router.post("/referrals", status_code=201, response_model=ReferralOut, tags=["referrals"])
    async def create_referral(body: ReferralIn, caller: Caller) -> ReferralOut:
        clinic(caller)
        return referral_out(
            await referrals.create_referral(app, body, actor=caller.key_id), base_url
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
        records = await queries.list_referrals(
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
        return referral_out(await queries.get_referral(app, referral_id), base_url)

    @router.post("/referrals/{referral_id}/cancel", response_model=ReferralOut, tags=["referrals"])
    async def cancel_referral(referral_id: str, body: CancelIn, caller: Caller) -> ReferralOut:
        clinic(caller)
        await referrals.cancel_referral(app, referral_id, body.reason, actor=caller.key_id)
        return referral_out(await queries.get_referral(app, referral_id), base_url)

    @router.get("/referrals/{referral_id}/report.pdf", tags=["referrals"])
    async def report_pdf(referral_id: str, caller: Caller) -> Response:
        pdf = await queries.report_pdf(app, referral_id, caller)
        return Response(pdf, media_type="application/pdf")

    @router.post("/api-keys", status_code=201, response_model=ApiKeyOut, tags=["auth"])
    async def issue_key(body: ApiKeyIn, caller: Caller) -> ApiKeyOut:
        """A key for this service (each service keeps its own keys; partners get theirs
        with ``POST /v1/partners``)."""
        caller.require_role("admin")
        key_id, key = await partners.issue_api_key(app, body.name, body.role, body.location_ids)
        return ApiKeyOut(
            id=key_id, name=body.name, role=body.role, location_ids=body.location_ids, api_key=key
        )

    @router.get("/clients/{client_id}", response_model=KnownClientOut, tags=["clients"])
    async def known_client(client_id: str, caller: Caller) -> KnownClientOut:
        """What booking's events told referrals about a client (a referral waits in draft
        until they have)."""
        clinic(caller)
        row = await queries.known_client(app, client_id)
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
