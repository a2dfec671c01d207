"""The partner API: a partner's key sees and answers its own referrals only."""

# No ``from __future__ import annotations``: FastAPI reads the routes' local ``Annotated``
# dependencies at run time.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from services.referrals.api.shapes import partner_referral_out
from services.referrals.domain import BusinessStatus
from services.referrals.queries import ReferralRecord, record_key
from services.referrals.schemas import (
    AcceptIn,
    CompleteIn,
    DeclineIn,
    NoShowIn,
    NoteIn,
    PartnerReferralOut,
    ScheduleIn,
)
from services.referrals.usecases import Referrals, partner_actions
from shared.auth import Principal
from shared.pagination import Paged, finish


def build_partner_router(app: Referrals, authenticate: Any) -> APIRouter:
    router = APIRouter(prefix="/v1/partner", tags=["partner API"])
    base_url = app.base_url

    async def partner_of(caller: Annotated[Principal, Depends(authenticate)]) -> str:
        caller.require_role("partner")
        assert caller.partner_id is not None, "a partner key names its partner"
        return caller.partner_id

    Partner = Annotated[str, Depends(partner_of)]

    def shaped(record: ReferralRecord) -> PartnerReferralOut:
        return partner_referral_out(record, base_url)

    @router.get("/referrals", response_model=list[PartnerReferralOut])
    async def my_referrals(
        partner_id: Partner,
        page: Paged,
        request: Request,
        response: Response,
        status: str | None = None,
    ) -> list[PartnerReferralOut]:
        """Your referrals, newest first; reading one tells the clinic you received it.
        At most ``limit`` a page; the next page's cursor is in ``X-Next-Cursor``."""
        records = await partner_actions.partner_referrals(app, partner_id, status, page=page)
        return [shaped(r) for r in finish(records, page, record_key, request, response)]

    @router.get("/referrals/{referral_id}", response_model=PartnerReferralOut)
    async def my_referral(referral_id: str, partner_id: Partner) -> PartnerReferralOut:
        return shaped(await partner_actions.partner_referral(app, partner_id, referral_id))

    @router.post("/referrals/{referral_id}/accept", response_model=PartnerReferralOut)
    async def accept(
        referral_id: str, partner_id: Partner, body: AcceptIn | None = None
    ) -> PartnerReferralOut:
        note = body.note if body else None
        return shaped(await partner_actions.accept(app, partner_id, referral_id, note))

    @router.post("/referrals/{referral_id}/decline", response_model=PartnerReferralOut)
    async def decline(referral_id: str, body: DeclineIn, partner_id: Partner) -> PartnerReferralOut:
        return shaped(await partner_actions.decline(app, partner_id, referral_id, body.reason))

    @router.post("/referrals/{referral_id}/schedule", response_model=PartnerReferralOut)
    async def schedule(
        referral_id: str, body: ScheduleIn, partner_id: Partner
    ) -> PartnerReferralOut:
        """The first visit is booked (again, to move it)."""
        return shaped(
            await partner_actions.schedule(app, partner_id, referral_id, body.start, body.note)
        )

    @router.post("/referrals/{referral_id}/complete", response_model=PartnerReferralOut)
    async def complete(
        referral_id: str, body: CompleteIn, partner_id: Partner
    ) -> PartnerReferralOut:
        """Done: the outcome report (summary, sessions, optional PDF)."""
        return shaped(
            await partner_actions.complete(
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
            await partner_actions.report(app, partner_id, referral_id, BusinessStatus.NO_SHOW, note)
        )

    @router.post("/referrals/{referral_id}/notes", response_model=PartnerReferralOut)
    async def interim_note(
        referral_id: str, body: NoteIn, partner_id: Partner
    ) -> PartnerReferralOut:
        """An interim note; ``sessions_completed`` moves your part of the care plan."""
        return shaped(
            await partner_actions.report(
                app,
                partner_id,
                referral_id,
                BusinessStatus.INTERIM_NOTE,
                body.text,
                body.sessions_completed,
            )
        )

    return router
