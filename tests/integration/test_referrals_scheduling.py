"""One active deadline scheduler behind a NATS KV lease, its failover, and booking's events
applied once, against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest

from shared import events
from shared.gate import Gate
from shared.jobstore import ChunkedJobStore
from shared.lease import Lease
from shared.scheduling import JobSpec, JobStoreConfig, LeasedScheduler
from tests.referrals_support import (
    client_event,
    known_client,
    make_partner,
    make_plan,
    post_ok,
    publish,
    referral_body,
    running_referrals,
    session_event,
)
from tests.support import EventTap, eventually, sqlite_url

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_one_holder_at_a_time_and_a_release_hands_over_at_once(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    key = f"test-{uuid.uuid4().hex[:8]}"
    first = Lease(nc.jetstream(), bucket="leases", key=key, ttl_seconds=30)
    second = Lease(nc.jetstream(), bucket="leases", key=key, ttl_seconds=30)
    try:
        assert await first.try_acquire()
        assert not await second.try_acquire()
        assert await first.renew()
        assert not await second.try_acquire()
        await first.release()
        assert await second.try_acquire()
        assert not await first.renew()
    finally:
        await second.release()
        await nc.close()


async def test_a_holder_that_stops_renewing_loses_the_lease_after_its_ttl(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    key = f"test-{uuid.uuid4().hex[:8]}"
    dead = Lease(nc.jetstream(), bucket="leases", key=key, ttl_seconds=1)
    standby = Lease(nc.jetstream(), bucket="leases", key=key, ttl_seconds=1)
    try:
        assert await dead.try_acquire()
        # `dead` never renews (a crashed process): the key lapses and the standby takes it.
        await eventually(standby.try_acquire, timeout=10, what="the lease to lapse")
        assert not await dead.renew(), "the old holder must learn it lost the lease"
    finally:
        await standby.release()
        await nc.close()


async def test_a_standby_takes_a_lease_whose_holder_stopped_even_if_the_key_never_expires(
    nats_url: str,
) -> None:
    # After a NATS node's loss the server was seen to drop an expired lease key more than
    # a minute late, and no replica became the scheduler meanwhile. Here the dead holder's
    # key carries no TTL at all: the standby takes it once it stood still for a whole TTL,
    # and never from a holder that keeps renewing.
    nc = await nats.connect(nats_url)
    key = f"test-{uuid.uuid4().hex[:8]}"
    js = nc.jetstream()
    alive = Lease(js, bucket="leases", key=key, ttl_seconds=1)
    standby = Lease(js, bucket="leases", key=key, ttl_seconds=1)
    try:
        assert await alive.try_acquire()
        for _ in range(8):  # 2.4 s, renewing as a live holder does
            await asyncio.sleep(alive.renew_every_seconds)
            assert await alive.renew()
            assert not await standby.try_acquire()
        await alive.release()

        kv = await js.key_value("leases")
        await kv.put(key, b"a crashed holder")  # no TTL: only the standby's watch ends it
        started = time.monotonic()
        await eventually(standby.try_acquire, timeout=10, what="the stale lease taken")
        assert time.monotonic() - started >= 1.0, "not before a whole TTL without renewal"
        assert (await kv.get(key)).value == standby.holder.encode()
        assert await standby.renew()
    finally:
        await standby.release()
        await nc.close()


async def test_the_standby_takes_over_the_job_store_and_runs_the_pending_deadline(
    tmp_path: Path, nats_url: str
) -> None:
    """Two replicas on one database: the first plans the jobs and stops; the second, which
    only waited for the lease, fires the reminder the first had planned."""
    database_url = sqlite_url(tmp_path, "referrals")
    shared_settings = {
        "referrals_lease_key": f"failover-{uuid.uuid4().hex[:8]}",
        "referrals_accept_hours": 4 / 3600,
        "referrals_expire_after_hours": 1.0,
    }
    async with AsyncExitStack() as replica_b:
        replica_a = AsyncExitStack()
        client_a, app_a = await replica_a.enter_async_context(
            running_referrals(database_url, nats_url, **shared_settings)
        )
        deadlines_a = app_a.state.runtime.deadlines
        await eventually(lambda: _value(deadlines_a.active), what="the first replica to lead")
        client, app_b = await replica_b.enter_async_context(
            running_referrals(database_url, nats_url, **shared_settings)
        )
        deadlines_b = app_b.state.runtime.deadlines
        assert not deadlines_b.active, "a second scheduler must wait for the lease"

        partner = await make_partner(client_a)
        client_id = str(uuid.uuid4())
        await publish(nats_url, client_event(client_id))
        await eventually(lambda: known_client(client_a, client_id), what="the client")
        plan = await make_plan(client_a, client_id)
        referral = await post_ok(client_a, "/v1/referrals", referral_body(plan, partner))
        job = f"{referral['id']}:accept-reminder"
        await eventually(lambda: _value(job in deadlines_a.job_ids()), what="jobs planned")

        await replica_a.aclose()  # the first replica stops, and gives the lease up
        await eventually(lambda: _value(deadlines_b.active), what="the standby to lead")
        await eventually(lambda: _value(job in deadlines_b.fired), timeout=15, what="reminder")
        row = (await client.get(f"/v1/referrals/{referral['id']}")).json()
        assert row["reminded_at"] is not None
        assert row["business_status"] == "reminder-sent"
        assert not deadlines_a.fired


DEADLINE = f"{__name__}:unbound_deadline"


async def unbound_deadline(name: str) -> None:
    """What the stored jobs name; the scheduler runs the test's handler instead."""


async def test_jobs_stored_while_a_commit_is_slow_still_run_on_time(
    tmp_path: Path, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A job store outside the gate (referrals' own SQLite file, or PostgreSQL) is written
    # on a thread. The scheduler's pass used to run before that transaction committed,
    # found no jobs, set no timer, and a referral's deadlines waited for the next add.
    committed = ChunkedJobStore.one_transaction

    @contextlib.contextmanager
    def slow_commit(store: ChunkedJobStore) -> Iterator[None]:
        with committed(store):
            yield
            time.sleep(0.3)  # a busy disk: the commit comes late

    monkeypatch.setattr(ChunkedJobStore, "one_transaction", slow_commit)
    fired: list[str] = []

    async def deadline(name: str) -> None:
        fired.append(name)

    nc = await nats.connect(nats_url)
    connected = asyncio.Event()
    connected.set()
    scheduler = LeasedScheduler(
        key=f"test-{uuid.uuid4().hex[:8]}",
        gate=Gate(enabled=False),
        jetstream=nc.jetstream,
        connected=connected,
        lease_ttl_seconds=5,
        lease_bucket="leases",
        store=JobStoreConfig(sqlite_url(tmp_path, "jobs")),
        handlers={DEADLINE: deadline},
    )
    scheduler.start()
    try:
        await asyncio.wait_for(scheduler.became_active.wait(), 10)
        soon = datetime.now(UTC) + timedelta(seconds=0.5)
        jobs = [JobSpec(DEADLINE, id=n, run_date=soon, args=(n,)) for n in "ab"]
        assert await scheduler.add_jobs(jobs)
        await eventually(lambda: _value(sorted(fired) == ["a", "b"]), timeout=5, what="jobs run")
    finally:
        await scheduler.stop()
        await nc.close()


async def test_a_session_counts_once_however_often_booking_says_so(
    database_url: str, nats_url: str
) -> None:
    async with running_referrals(database_url, nats_url) as (client, _app):
        client_id = str(uuid.uuid4())
        plan = await make_plan(client, client_id, massage_sessions=3)
        session_id = str(uuid.uuid4())
        completed = session_event(client_id, events.SESSION_COMPLETED, session_id=session_id)
        async with EventTap(nats_url, events.PLAN_UPDATED) as tap:
            await publish(nats_url, completed)
            await publish(nats_url, completed, msg_id=str(uuid.uuid4()))  # same event again
            # A second event about the same session (a replay with a new id) counts nothing.
            await publish(
                nats_url, session_event(client_id, events.SESSION_NO_SHOW, session_id=session_id)
            )
            await publish(nats_url, session_event(client_id, events.SESSION_NO_SHOW))
            # Other session events and other clients' sessions change nothing here.
            await publish(nats_url, session_event(str(uuid.uuid4())))
            last = await tap.wait_for(
                lambda e: (
                    e["data"]["plan_id"] == plan["id"]
                    and e["data"]["progress"]["components"][0]["no_shows"] == 1
                )
            )
        massage = last["data"]["progress"]["components"][0]
        assert (massage["completed"], massage["no_shows"], massage["done"]) == (1, 1, False)
        now = (await client.get(f"/v1/plans/{plan['id']}")).json()
        assert now["components"][0]["completed"] == 1 and now["version"] == 3


async def _value(value: object) -> object:
    return value
