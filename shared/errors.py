"""The failures every service reports the same way, and the one place they become HTTP.

A use case raises a :class:`DomainError` subclass named after what went wrong
(``SlotTaken``, ``PlanNotActive``); its class says the status. ``install_error_handlers``
maps them once per app, so routes never build error responses by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class DomainError(Exception):
    """A request that is understood but cannot be applied. ``field`` names the culprit."""

    status: ClassVar[int] = 422

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidRequest(DomainError):
    """Well formed, but it cannot be applied (422)."""

    def __init__(self, field_name: str | None, message: str) -> None:
        super().__init__(f"{field_name}: {message}" if field_name else message, field=field_name)


class NotFound(DomainError):
    """A referenced thing does not exist, or is not the caller's to see (404)."""

    status = 404

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident} not found")
        self.kind = kind
        self.ident = ident


class Conflict(DomainError):
    """The request clashes with the current state (409)."""

    status = 409


class Unavailable(DomainError):
    """A configuration or dependency problem stops this request, not the caller (503)."""

    status = 503


def error_body(exc: Exception) -> dict[str, Any]:
    body: dict[str, Any] = {"detail": str(exc), "error": type(exc).__name__}
    field = getattr(exc, "field", None)
    if field:
        body["field"] = field
    return body


def install_error_handlers(
    app: FastAPI, others: Mapping[type[Exception], int] | None = None
) -> None:
    """Answer every :class:`DomainError` with its status, and ``others`` (exceptions of
    libraries, e.g. ``InvalidPhone``) with the status given for them."""
    statuses: dict[type[Exception], int] = dict(others or {})

    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, DomainError):
            status = exc.status
        else:
            status = next(code for kind, code in statuses.items() if isinstance(exc, kind))
        return JSONResponse(error_body(exc), status_code=status)

    app.add_exception_handler(DomainError, handle)
    for kind in statuses:
        app.add_exception_handler(kind, handle)
