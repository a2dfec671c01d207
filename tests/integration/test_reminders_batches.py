"""Booking's session events applied by reminders in batches (one transaction per fetch):
what a client would notice stays as with one event at a time. The newest version of a
session wins whatever the order within a batch, a client named by several events of one
batch is remembered once, and an event seen again changes nothing."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from services.reminders import db
from services.reminders.consumers import apply_session_event, prepare_batch
from services.reminders.migrate import upgrade
from shared import events
from shared.consuming import InboxBatch
from shared.db import create_engine, sync_url, transaction
from shared.inbox import inbox
from shared.timeutil import utcnow
from shared.uow import UnitOfWork
from tools.kit.events import client_ref, session_event

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _apply_together(batch: InboxBatch, items: list[events.CloudEvent[Any]]) -> None:
    await asyncio.gather(*(batch.apply(e) for e in items))


async def test_a_batch_of_session_events_keeps_the_newest_version_and_applies_once(
    database_url: str,
) -> None:
    await asyncio.to_thread(upgrade, sync_url(database_url))
    engine = create_engine(database_url)
    uow = UnitOfWork(engine)
    batch = InboxBatch("reminders-sessions", uow, apply_session_event, prepare_batch)
    client = client_ref(first_name="Ana")
    start = utcnow() + timedelta(days=3)
    other = session_event(client=client, start=start + timedelta(days=1))
    booked = session_event(client=client, start=start)
    sid = booked.data.session_id
    moved = session_event(
        events.SESSION_RESCHEDULED,
        session_id=sid,
        version=3,
        client=client,
        start=start + timedelta(hours=2),
    )
    stale = session_event(
        events.SESSION_RESCHEDULED,
        session_id=sid,
        version=2,
        client=client,
        start=start + timedelta(hours=5),
    )
    try:
        # The newest before an older one, and the newest fetched twice, in one batch.
        await _apply_together(batch, [booked, moved, stale, other, moved.model_copy()])
        assert batch.batches == 1
        async with transaction(uow.sessions) as session:
            row = await session.get(db.Session, sid)
            assert row is not None
            assert row.version == 3
            assert row.start_at == moved.data.start
            assert row.plan_pending
            assert await session.get(db.Session, other.data.session_id) is not None
            clients = await session.scalar(
                select(func.count()).select_from(db.Client).where(db.Client.id == client.id)
            )
            assert clients == 1
            seen = await session.scalar(select(func.count()).select_from(inbox))
            assert seen == 4
            change_seq = row.change_seq
        # Redelivered, the whole batch changes nothing.
        await _apply_together(batch, [booked, moved, stale, other])
        async with transaction(uow.sessions) as session:
            row = await session.get(db.Session, sid)
            assert row is not None
            assert (row.version, row.change_seq) == (3, change_seq)
    finally:
        await engine.dispose()
