"""Calendar links beyond the happy path: production without a secret key, and the migration."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from alembic import command
from pydantic import ValidationError
from sqlalchemy import create_engine, inspect

from services.booking.app import create_app
from services.booking.migrate import MIGRATIONS
from shared.db import sync_url
from shared.migrations import alembic_config
from shared.natsauth import with_credentials
from shared.secretbox import SecretBox
from tests.integration.test_booking_api import make_clinic, settings_for
from tests.support import AUTH, serve, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="session")

CALENDAR_TABLES = {"calendar_links", "calendar_pushes", "external_busy"}


async def test_production_with_the_dev_secret_key_refuses_to_start(
    sqlite_database_url: str, nats_url: str
) -> None:
    # It used to start and store no password; now production refuses every development
    # default at start, naming it (CONTRACT "Ports and settings"). Production connects as a
    # NATS user, so the key is the one default left.
    production_nats = with_credentials(nats_url, "booking", "test")
    with pytest.raises(ValidationError, match="BOOKING_SECRET_KEY"):
        settings_for(sqlite_database_url, production_nats, app_env="production")


async def test_a_link_without_a_password_needs_no_usable_key(
    sqlite_database_url: str, nats_url: str
) -> None:
    app = create_app(settings_for(sqlite_database_url, nats_url))
    # A box without a usable key (as production with the dev key would have built).
    app.state.runtime.calendar.context.box = SecretBox(
        [], setting="BOOKING_SECRET_KEY", refused_because="BOOKING_SECRET_KEY unset"
    )
    async with serve(app) as base_url:
        await wait_ready(base_url)
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=30) as client:
            clinic = await make_clinic(client)
            body = {
                "owner_type": "therapist",
                "owner_id": clinic["therapists"][0]["id"],
                "direction": "pull",
                "kind": "ics",
                "url": "https://calendar.example.com/ana.ics",
            }
            refused = await client.post(
                "/v1/calendar-links", json={**body, "username": "ana", "password": "pw"}
            )
            assert refused.status_code == 503, refused.text
            assert "BOOKING_SECRET_KEY" in refused.json()["detail"]
            # A link without a password needs no key and still works.
            assert (await client.post("/v1/calendar-links", json=body)).status_code == 201


async def test_the_migration_goes_up_down_and_up_again(database_url: str) -> None:
    def run() -> tuple[set[str], set[str]]:
        config = alembic_config(MIGRATIONS, database_url)
        engine = create_engine(sync_url(database_url))
        try:
            command.upgrade(config, "head")
            up = set(inspect(engine).get_table_names())
            command.downgrade(config, "0001")
            down = set(inspect(engine).get_table_names())
            command.upgrade(config, "head")
            return up, down
        finally:
            engine.dispose()

    up, down = await asyncio.to_thread(run)
    assert up >= CALENDAR_TABLES
    assert not CALENDAR_TABLES & down and "sessions" in down
