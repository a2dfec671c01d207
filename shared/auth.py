"""API keys with roles: admin, front desk (for given locations), partner (its own referrals).

Keys are random; only their SHA-256 is stored, so a database leak gives no usable key.
The bootstrap ``ADMIN_API_KEY`` from the settings is accepted by every service. Booking
issues and revokes the clinic's keys; reminders and referrals learn their hashes from
``booking.apikey.*`` (:func:`remember_key`) into their own table, which their
:class:`Authenticator` reads on every request, so a change holds there within seconds.

:class:`Scope` is what a caller may reach: every location (admin) or its own (front desk).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from fastapi import Depends, HTTPException, Request
from sqlalchemy import JSON, Column, MetaData, String, Table, insert, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from shared.db import UtcDateTime
from shared.errors import InvalidRequest, NotFound
from shared.payloads import ApiKeyEvent
from shared.timeutil import utcnow

Role = Literal["admin", "front_desk", "partner"]

_metadata = MetaData()

api_keys = Table(
    "api_keys",
    _metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("role", String(20), nullable=False),
    Column("location_ids", JSON, nullable=False, default=list),
    Column("partner_id", String(36), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=True),
)


def add_api_keys_table(metadata: MetaData) -> Table:
    return api_keys.to_metadata(metadata)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(prefix: str = "ck") -> str:
    """A fresh random key, shown to its owner once."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may touch."""

    key_id: str
    role: Role
    location_ids: frozenset[str] = field(default_factory=frozenset)
    partner_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def require_role(self, *roles: Role) -> None:
        if self.role not in roles:
            raise HTTPException(
                403, f"this needs one of the roles {', '.join(roles)}; the key is {self.role}"
            )

    def require_location(self, location_id: str) -> None:
        """Admins see everything; front desk only the locations on its key."""
        if self.is_admin:
            return
        if self.role != "front_desk" or location_id not in self.location_ids:
            raise HTTPException(403, f"this key may not act for location {location_id}")


@dataclass(frozen=True)
class Scope:
    """The locations whose data a caller reaches: ``None`` means every one (an admin).

    Built from the caller once per request and handed to the queries and use cases, which
    filter with it; what lies outside answers 404, as if it did not exist.
    """

    location_ids: frozenset[str] | None

    @classmethod
    def of(cls, principal: Principal) -> Scope:
        if principal.is_admin:
            return EVERYTHING
        if principal.role == "front_desk":
            return cls(principal.location_ids)
        return cls(frozenset())

    @property
    def everything(self) -> bool:
        return self.location_ids is None

    def allows(self, location_id: str | None) -> bool:
        if self.location_ids is None:
            return True
        return location_id is not None and location_id in self.location_ids

    def require(self, location_id: str | None, kind: str = "location") -> None:
        """:class:`NotFound` for a location outside the scope (``kind`` names the thing)."""
        if not self.allows(location_id):
            raise NotFound(kind, location_id or "")

    def location_for(self, asked: str | None, field_name: str) -> str | None:
        """The location a new thing belongs to: as asked (checked against the scope), or a
        front desk's only location; a front desk of several locations has to say which."""
        if asked is not None:
            self.require(asked)
            return asked
        if self.location_ids is None:
            return None
        if len(self.location_ids) == 1:
            return next(iter(self.location_ids))
        raise InvalidRequest(field_name, "say which of this key's locations it belongs to")

    def where(self, column: Any) -> ColumnElement[bool]:
        """``column`` (a location id) is in the scope, as an SQL condition."""
        if self.location_ids is None:
            return true()
        return column.in_(sorted(self.location_ids))


#: The scope of an admin and of the system itself.
EVERYTHING = Scope(None)


def clinic_scope(
    authenticate: Callable[..., Awaitable[Principal]],
) -> Callable[[Principal], Awaitable[Scope]]:
    """A FastAPI dependency: the caller's :class:`Scope`, for clinic staff (admin, front
    desk) only; any other key gets 403."""

    async def scope(caller: Principal = Depends(authenticate)) -> Scope:
        caller.require_role("admin", "front_desk")
        return Scope.of(caller)

    return scope


async def create_key(
    session: AsyncSession,
    *,
    key_id: str,
    name: str,
    role: Role,
    location_ids: list[str] | None = None,
    partner_id: str | None = None,
) -> str:
    """Store a new key's hash and return the key itself (the only time it is seen)."""
    key = new_key()
    await session.execute(
        insert(api_keys).values(
            id=key_id,
            name=name,
            key_hash=hash_key(key),
            role=role,
            location_ids=location_ids or [],
            partner_id=partner_id,
            created_at=utcnow(),
        )
    )
    return key


async def revoke_key(session: AsyncSession, key_id: str, at: datetime) -> datetime | None:
    """Mark the key revoked (kept, for the record). Returns when it was revoked, the first
    time if it already was; ``None`` if there is no such key."""
    row = (
        await session.execute(select(api_keys.c.revoked_at).where(api_keys.c.id == key_id))
    ).first()
    if row is None:
        return None
    if row.revoked_at is not None:
        return row.revoked_at
    await session.execute(update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=at))
    return at


async def remember_key(session: AsyncSession, data: ApiKeyEvent) -> None:
    """Apply ``booking.apikey.issued`` or ``.revoked`` to this service's key table.

    Events may come twice or out of order: a revoked key stays revoked whatever follows."""
    row = (
        await session.execute(select(api_keys.c.revoked_at).where(api_keys.c.id == data.id))
    ).first()
    if row is None:
        await session.execute(
            insert(api_keys).values(
                id=data.id,
                name="issued by booking",
                key_hash=data.sha256,
                role=data.role,
                location_ids=list(data.location_ids),
                partner_id=None,
                created_at=utcnow(),
                revoked_at=data.revoked_at,
            )
        )
        return
    await session.execute(
        update(api_keys)
        .where(api_keys.c.id == data.id)
        .values(
            role=data.role,
            location_ids=list(data.location_ids),
            revoked_at=row.revoked_at or data.revoked_at,
        )
    )


def key_locations(location_ids: Iterable[str]) -> list[str]:
    """Location ids as stored and announced: each once, sorted."""
    return sorted(set(location_ids))


class Authenticator:
    """FastAPI dependency: the ``Authorization: Bearer <key>`` header to a :class:`Principal`."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], admin_api_key: str) -> None:
        self._sessions = sessions
        self._admin_hash = hash_key(admin_api_key)

    async def __call__(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise HTTPException(
                401,
                "missing API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        presented = hash_key(key.strip())
        if hmac.compare_digest(presented, self._admin_hash):
            return Principal(key_id="bootstrap-admin", role="admin")
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(api_keys).where(
                        api_keys.c.key_hash == presented, api_keys.c.revoked_at.is_(None)
                    )
                )
            ).first()
        if row is None:
            raise HTTPException(
                401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"}
            )
        return Principal(
            key_id=row.id,
            role=row.role,
            location_ids=frozenset(row.location_ids or []),
            partner_id=row.partner_id,
        )
