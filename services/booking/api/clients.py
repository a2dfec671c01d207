"""Client records, for the front desk and admins."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from services.booking import queries
from services.booking.api.common import ApiContext, client_out
from services.booking.schemas import ClientIn, ClientOut, ClientPatch
from services.booking.usecases import clients
from shared.auth import Scope


def router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    booking = ctx.booking
    Scoped = Annotated[Scope, Depends(ctx.scope)]

    # -- clients ----------------------------------------------------------------------
    @router.post("/clients", status_code=201, response_model=ClientOut, tags=["clients"])
    async def create_client(body: ClientIn, scope: Scoped) -> ClientOut:
        return client_out(await clients.create_client(booking, body, scope=scope))

    @router.get("/clients", response_model=list[ClientOut], tags=["clients"])
    async def list_clients(
        scope: Scoped,
        phone: str | None = None,
        limit: int = Query(100, ge=1, le=500),
        offset: int = Query(0, ge=0, le=1_000_000),
    ) -> list[ClientOut]:
        rows = await queries.list_clients(booking, phone, limit, offset, scope=scope)
        return [client_out(c) for c in rows]

    @router.get("/clients/{client_id}", response_model=ClientOut, tags=["clients"])
    async def get_client(client_id: str, scope: Scoped) -> ClientOut:
        return client_out(await queries.get_client(booking, client_id, scope=scope))

    @router.patch("/clients/{client_id}", response_model=ClientOut, tags=["clients"])
    async def update_client(client_id: str, body: ClientPatch, scope: Scoped) -> ClientOut:
        return client_out(await clients.update_client(booking, client_id, body, scope=scope))

    return router
