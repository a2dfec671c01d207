"""Alembic, the same way for every service: migrations run on start or by ``migrate``.

A service keeps its own ``migrations/`` folder (its own database, its own history); its
``env.py`` is two lines calling :func:`run_env` with the service's metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData, create_engine, pool

from shared.db import sync_url

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported where it is used: a service imports this module at start, but runs
# its migrations in a child process (``shared.service.run_service``), so the ~12 MB of
# Alembic and its scripts never stay in the server's memory.

#: Tables other libraries create and own (APScheduler's job store): autogenerate skips them.
FOREIGN_TABLES = frozenset({"apscheduler_jobs"})


def alembic_config(script_location: Path, database_url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("sqlalchemy.url", sync_url(database_url).replace("%", "%%"))
    return config


def upgrade(script_location: Path, database_url: str, revision: str = "head") -> None:
    """Bring the database to ``revision``; safe to run on every start."""
    from alembic import command

    command.upgrade(alembic_config(script_location, database_url), revision)


def _ours(_obj: Any, name: str | None, type_: str, _reflected: bool, _compare: Any) -> bool:
    return not (type_ == "table" and name in FOREIGN_TABLES)


def run_env(metadata: MetaData) -> None:
    """The body of a service's ``env.py``: a blocking engine on the service's database."""
    from alembic import context

    url = context.config.get_main_option("sqlalchemy.url") or ""
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata, include_object=_ours)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=True,
            include_object=_ours,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
