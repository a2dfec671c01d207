"""API keys with roles: admin, front desk (for given locations), partner (its own referrals).

Keys are random; only their SHA-256 is stored, so a database leak gives no usable key.
The bootstrap ``ADMIN_API_KEY`` from the settings is accepted by every service.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Literal

from fastapi import HTTPException, Request
from sqlalchemy import JSON, Column, MetaData, String, Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import UtcDateTime
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
