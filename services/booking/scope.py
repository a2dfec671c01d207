"""What a front-desk key reaches in booking, in one place.

A caller's :class:`~shared.auth.Scope` is a set of locations (or every one, for an admin).
Through it a caller reaches: those locations and their rooms; the therapists with working
hours there (and their time off); the clients whose home location is one of them or who
have a session there; the sessions there. Queries filter with :func:`visible`; a single
row is read with :func:`get_visible`, which answers :class:`NotFound` for anything outside,
exactly as for an id that does not exist.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from services.booking import db
from shared.auth import Scope
from shared.errors import NotFound

RowT = TypeVar("RowT")


def _locations(scope: Scope) -> ColumnElement[bool]:
    return scope.where(db.Location.id)


def _therapists(scope: Scope) -> ColumnElement[bool]:
    if scope.everything:
        return scope.where(db.Therapist.id)
    works_there = select(db.WorkingHours.therapist_id).where(
        scope.where(db.WorkingHours.location_id)
    )
    return db.Therapist.id.in_(works_there)


def _clients(scope: Scope) -> ColumnElement[bool]:
    if scope.everything:
        return scope.where(db.Client.id)
    seen_there = select(db.Session.client_id).where(scope.where(db.Session.location_id))
    return or_(scope.where(db.Client.home_location_id), db.Client.id.in_(seen_there))


def _sessions(scope: Scope) -> ColumnElement[bool]:
    return scope.where(db.Session.location_id)


_RULES: dict[type[Any], Any] = {
    db.Location: _locations,
    db.Therapist: _therapists,
    db.Client: _clients,
    db.Session: _sessions,
    db.WaitlistEntry: lambda scope: scope.where(db.WaitlistEntry.location_id),
}


def visible(model: type[Any], scope: Scope) -> ColumnElement[bool]:
    """The SQL condition: a row of ``model`` is within ``scope``."""
    return _RULES[model](scope)


async def get_visible(
    session: AsyncSession,
    model: type[RowT],
    ident: str,
    kind: str,
    scope: Scope,
    options: list[Any] | None = None,
) -> RowT:
    """The row ``ident`` of ``model`` if ``scope`` reaches it, else :class:`NotFound`."""
    if not scope.everything:
        reachable = await session.scalar(
            select(model.id).where(model.id == ident, visible(model, scope))  # type: ignore[attr-defined]
        )
        if reachable is None:
            raise NotFound(kind, ident)
    row = await session.get(model, ident, options=options)
    if row is None:
        raise NotFound(kind, ident)
    return row
