"""Booking's HTTP API: one router per resource; each route parses, authorizes, calls a use
case or a query, and shapes the answer. Failures are named exceptions (``domain``,
``shared.errors``) that ``shared.errors.install_error_handlers`` maps to HTTP once.

The router modules do not use ``from __future__ import annotations``: FastAPI reads each
route's annotations when it is declared, and ``Caller`` is local to the router builder.
"""

from __future__ import annotations

from fastapi import APIRouter

from services.booking.api import calendars, changes, clients, keys, sessions, setup, waitlist
from services.booking.api.common import ApiContext


def build_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/v1")
    for part in (setup, changes, clients, sessions, calendars, keys, waitlist):
        router.include_router(part.router(ctx))
    return router
