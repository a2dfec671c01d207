"""API keys, issued and revoked by an admin; the key itself is shown once."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from services.booking.api.common import ApiContext, admin
from services.booking.schemas import ApiKeyIn, ApiKeyOut, ApiKeyView
from services.booking.usecases import keys
from shared.auth import Principal
from shared.pagination import Paged, finish


def key_view(row: Any) -> ApiKeyView:
    return ApiKeyView(
        id=row.id,
        name=row.name,
        role=row.role,
        location_ids=list(row.location_ids or []),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    booking = ctx.booking
    Caller = Annotated[Principal, Depends(ctx.authenticate)]

    # -- API keys ---------------------------------------------------------------------
    @router.post("/api-keys", status_code=201, response_model=ApiKeyOut, tags=["auth"])
    async def issue_key(body: ApiKeyIn, caller: Caller) -> ApiKeyOut:
        """A new key for every service (reminders and referrals honour it within seconds)."""
        admin(caller)
        row, key = await keys.issue_api_key(booking, body.name, body.role, body.location_ids)
        return ApiKeyOut(**key_view(row).model_dump(), api_key=key)

    @router.get("/api-keys", response_model=list[ApiKeyView], tags=["auth"])
    async def list_keys(
        caller: Caller, page: Paged, request: Request, response: Response
    ) -> list[ApiKeyView]:
        """Every key issued here, revoked ones too; never the key itself."""
        admin(caller)
        rows = await keys.list_api_keys(booking, page=page)
        return [key_view(r) for r in finish(rows, page, keys.key_key, request, response)]

    @router.delete("/api-keys/{key_id}", status_code=204, tags=["auth"])
    async def revoke(key_id: str, caller: Caller) -> Response:
        """Revoke a key: refused here at once, at reminders and referrals within seconds."""
        admin(caller)
        await keys.revoke_api_key(booking, key_id)
        return Response(status_code=204)

    return router
