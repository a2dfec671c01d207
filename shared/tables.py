"""The parts of a service's schema every service has: naming convention, outbox, inbox,
API keys. Each service still has its own database and its own metadata."""

from __future__ import annotations

from sqlalchemy import MetaData

from shared.auth import add_api_keys_table
from shared.inbox import add_inbox_table
from shared.outbox import add_outbox_table

#: Deterministic constraint names, so Alembic migrations work the same on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def service_metadata() -> MetaData:
    """A fresh metadata holding the outbox, inbox and API-key tables."""
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    add_outbox_table(metadata)
    add_inbox_table(metadata)
    add_api_keys_table(metadata)
    return metadata
