"""The clinic's API: partners (admin), care plans and referrals (front desk, within its
locations: ``services.referrals.scope``), and what booking told us about a client."""

# No ``from __future__ import annotations``: FastAPI reads the routes' local ``Annotated``
# dependencies at run time.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from services.referrals import queries
from services.referrals.api.shapes import partner_out, plan_out, referral_out
from services.referrals.schemas import (
    CancelIn,
    KnownClientOut,
    PartnerCreatedOut,
    PartnerIn,
    PartnerKeyOut,
    PartnerOut,
    PartnerSecretOut,
    PlanIn,
    PlanOut,
    ReferralIn,
    ReferralOut,
)
from services.referrals.usecases import Referrals, partners, plans, referrals
from shared.auth import Principal, Scope, clinic_scope
from shared.pagination import Paged, finish


def build_clinic_router(app: Referrals, authenticate: Any) -> APIRouter:
    router = APIRouter(prefix="/v1")
    Caller = Annotated[Principal, Depends(authenticate)]
    Scoped = Annotated[Scope, Depends(clinic_scope(authenticate))]
    base_url = app.base_url

    @router.post("/partners", status_code=201, response_model=PartnerCreatedOut, tags=["partners"])
    async def create_partner(body: PartnerIn, caller: Caller) -> PartnerCreatedOut:
        caller.require_role("admin")
        partner, api_key, secret = await partners.create_partner(app, body)
        return PartnerCreatedOut(
            **partner_out(partner).model_dump(), api_key=api_key, webhook_secret=secret
        )

    @router.get("/partners", response_model=list[PartnerOut], tags=["partners"])
    async def list_partners(
        caller: Caller,
        page: Paged,
        request: Request,
        response: Response,
        discipline: str | None = None,
        location_id: str | None = None,
    ) -> list[PartnerOut]:
        caller.require_role("admin")
        rows = await queries.list_partners(app, discipline, location_id, page=page)
        return [partner_out(p) for p in finish(rows, page, queries.partner_key, request, response)]

    @router.get("/partners/{partner_id}", response_model=PartnerOut, tags=["partners"])
    async def get_partner(partner_id: str, caller: Caller) -> PartnerOut:
        if caller.role == "partner" and caller.partner_id == partner_id:
            return partner_out(await queries.get_partner(app, partner_id))
        caller.require_role("admin")
        return partner_out(await queries.get_partner(app, partner_id))

    @router.post(
        "/partners/{partner_id}/rotate-key", response_model=PartnerKeyOut, tags=["partners"]
    )
    async def rotate_partner_key(partner_id: str, caller: Caller) -> PartnerKeyOut:
        """A new API key for the partner, shown this once; the old key is refused at once."""
        caller.require_role("admin")
        return PartnerKeyOut(
            partner_id=partner_id, api_key=await partners.rotate_key(app, partner_id)
        )

    @router.post(
        "/partners/{partner_id}/rotate-webhook-secret",
        response_model=PartnerSecretOut,
        tags=["partners"],
    )
    async def rotate_partner_secret(partner_id: str, caller: Caller) -> PartnerSecretOut:
        """A new webhook secret, shown this once; webhooks are signed with it from now on."""
        caller.require_role("admin")
        secret = await partners.rotate_webhook_secret(app, partner_id)
        return PartnerSecretOut(partner_id=partner_id, webhook_secret=secret)

    @router.post("/plans", status_code=201, response_model=PlanOut, tags=["plans"])
    async def create_plan(body: PlanIn, scope: Scoped) -> PlanOut:
        return plan_out(await plans.create_plan(app, body, within=scope))

    @router.get("/plans", response_model=list[PlanOut], tags=["plans"])
    async def list_plans(
        scope: Scoped,
        page: Paged,
        request: Request,
        response: Response,
        client_id: str | None = None,
        status: str | None = None,
    ) -> list[PlanOut]:
        rows = await queries.list_plans(app, client_id, status, page=page, within=scope)
        return [plan_out(p) for p in finish(rows, page, queries.newest_key, request, response)]

    @router.get("/plans/{plan_id}", response_model=PlanOut, tags=["plans"])
    async def get_plan(plan_id: str, scope: Scoped) -> PlanOut:
        return plan_out(await queries.get_plan(app, plan_id, within=scope))

    @router.post("/referrals", status_code=201, response_model=ReferralOut, tags=["referrals"])
    async def create_referral(body: ReferralIn, caller: Caller, scope: Scoped) -> ReferralOut:
        return referral_out(
            await referrals.create_referral(app, body, actor=caller.key_id, within=scope),
            base_url,
        )

    @router.get("/referrals", response_model=list[ReferralOut], tags=["referrals"])
    async def list_referrals(
        scope: Scoped,
        page: Paged,
        request: Request,
        response: Response,
        plan_id: str | None = None,
        partner_id: str | None = None,
        client_id: str | None = None,
        status: str | None = None,
    ) -> list[ReferralOut]:
        records = await queries.list_referrals(
            app,
            plan_id=plan_id,
            partner_id=partner_id,
            client_id=client_id,
            status=status,
            page=page,
            within=scope,
        )
        records = finish(records, page, queries.record_key, request, response)
        return [referral_out(r, base_url) for r in records]

    @router.get("/referrals/{referral_id}", response_model=ReferralOut, tags=["referrals"])
    async def get_referral(referral_id: str, scope: Scoped) -> ReferralOut:
        return referral_out(await queries.get_referral(app, referral_id, within=scope), base_url)

    @router.post("/referrals/{referral_id}/cancel", response_model=ReferralOut, tags=["referrals"])
    async def cancel_referral(
        referral_id: str, body: CancelIn, caller: Caller, scope: Scoped
    ) -> ReferralOut:
        await referrals.cancel_referral(
            app, referral_id, body.reason, actor=caller.key_id, within=scope
        )
        return referral_out(await queries.get_referral(app, referral_id, within=scope), base_url)

    @router.get("/referrals/{referral_id}/report.pdf", tags=["referrals"])
    async def report_pdf(referral_id: str, caller: Caller) -> Response:
        pdf = await queries.report_pdf(app, referral_id, caller)
        return Response(pdf, media_type="application/pdf")

    @router.get("/clients/{client_id}", response_model=KnownClientOut, tags=["clients"])
    async def known_client(client_id: str, scope: Scoped) -> KnownClientOut:
        """What booking's events told referrals about a client (a referral waits in draft
        until they have); a front desk sees the clients of its locations' plans."""
        row = await queries.known_client(app, client_id, within=scope)
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
