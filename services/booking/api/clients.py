"""Client records, for the front desk and admins."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from services.booking import queries
from services.booking.api.common import ApiContext, client_out
from services.booking.schemas import ClientIn, ClientOut, ClientPatch
from services.booking.usecases import clients
from shared.auth import Principal


def router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    booking = ctx.booking
    Caller = Annotated[Principal, Depends(ctx.authenticate)]

    # -- clients ----------------------------------------------------------------------
    @router.post("/clients", status_code=201, response_model=ClientOut, tags=["clients"])
    async def create_client(body: ClientIn, caller: Caller) -> ClientOut:
        caller.require_role("admin", "front_desk")
        return client_out(await clients.create_client(booking, body))

    @router.get("/clients", response_model=list[ClientOut], tags=["clients"])
    async def list_clients(
        caller: Caller,
        phone: str | None = None,
        limit: int = Query(100, ge=1, le=500),
        offset: int = Query(0, ge=0, le=1_000_000),
    ) -> list[ClientOut]:
        caller.require_role("admin", "front_desk")
        return [client_out(c) for c in await queries.list_clients(booking, phone, limit, offset)]

    @router.get("/clients/{client_id}", response_model=ClientOut, tags=["clients"])
    async def get_client(client_id: str, caller: Caller) -> ClientOut:
        caller.require_role("admin", "front_desk")
        return client_out(await queries.get_client(booking, client_id))

    @router.patch("/clients/{client_id}", response_model=ClientOut, tags=["clients"])
    async def update_client(client_id: str, body: ClientPatch, caller: Caller) -> ClientOut:
        caller.require_role("admin", "front_desk")
        return client_out(await clients.update_client(booking, client_id, body))

    return router
