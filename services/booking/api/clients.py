"""Client records, for the front desk and admins."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from services.booking import queries
from services.booking.api.common import ApiContext, client_out
from services.booking.schemas import ClientIn, ClientOut, ClientPatch
from services.booking.usecases import clients
from shared.auth import Scope
from shared.pagination import Paged, finish


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
        request: Request,
        response: Response,
        page: Paged,
        phone: str | None = None,
    ) -> list[ClientOut]:
        rows = await queries.list_clients(booking, phone, page=page, scope=scope)
        rows = finish(rows, page, queries.client_key, request, response)
        return [client_out(c) for c in rows]

    @router.get("/clients/{client_id}", response_model=ClientOut, tags=["clients"])
    async def get_client(client_id: str, scope: Scoped) -> ClientOut:
        return client_out(await queries.get_client(booking, client_id, scope=scope))

    @router.patch("/clients/{client_id}", response_model=ClientOut, tags=["clients"])
    async def update_client(client_id: str, body: ClientPatch, scope: Scoped) -> ClientOut:
        return client_out(await clients.update_client(booking, client_id, body, scope=scope))

    return router
