"""API keys, issued by an admin."""

from typing import Annotated

from fastapi import APIRouter, Depends

from services.booking.api.common import ApiContext, admin
from services.booking.schemas import ApiKeyIn, ApiKeyOut
from services.booking.usecases import keys
from shared.auth import Principal


def router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    booking = ctx.booking
    Caller = Annotated[Principal, Depends(ctx.authenticate)]

    # -- API keys ---------------------------------------------------------------------
    @router.post("/api-keys", status_code=201, response_model=ApiKeyOut, tags=["auth"])
    async def issue_key(body: ApiKeyIn, caller: Caller) -> ApiKeyOut:
        admin(caller)
        key_id, key = await keys.issue_api_key(booking, body.name, body.role, body.location_ids)
        return ApiKeyOut(
            id=key_id, name=body.name, role=body.role, location_ids=body.location_ids, api_key=key
        )

    return router
