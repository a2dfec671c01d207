"""The background loop's poll: a quiet service stops looking every few seconds, and a
wake-up (a commit) still runs the step at once; its stop holds whatever its step does."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import cast

from nats.js.client import JetStreamContext
from sqlalchemy.ext.asyncio import create_async_engine

from shared.lease import Lease
from shared.service import Messaging
from shared.uow import UnitOfWork
from shared.worker import Worker


async def test_a_quiet_worker_stretches_its_poll_and_a_wake_up_brings_it_back() -> None:
    looks: list[float] = []
    loop = asyncio.get_running_loop()

    async def look() -> None:
        looks.append(loop.time())

    worker = Worker("relay", look, poll_seconds=0.05, idle_poll_seconds=0.4)
    worker.start()
    try:
        await asyncio.sleep(1.6)
        quiet = len(looks)
        # Unstretched it would have looked 32 times; stretched 0.05, 0.1, 0.2, 0.4, 0.4 ...
        assert 4 <= quiet <= 10, f"{quiet} looks in 1.6 s"
        assert looks[-1] - looks[-2] >= 0.35, "the wait grows to the idle poll"

        woken_at = loop.time()
        worker.wake()
        await asyncio.sleep(0.3)
        after = [t for t in looks if t >= woken_at]
        assert after and after[0] - woken_at < 0.1, "a wake-up runs the step at once"
        assert len(after) >= 3, "and the poll is back to its short wait"
    finally:
        await worker.stop()


async def test_without_an_idle_poll_the_poll_stays_as_set() -> None:
    looks = 0

    async def look() -> None:
        nonlocal looks
        looks += 1

    worker = Worker("planner", look, poll_seconds=0.05)
    worker.start()
    try:
        await asyncio.sleep(0.8)
    finally:
        await worker.stop()
    assert looks >= 12, "a planner keeps its poll (another replica may have left work)"


async def test_a_stop_right_after_a_wake_up_stops_the_worker() -> None:
    """The shutdown of an app whose worker was woken in the same turn of the loop (a
    calendar push finishing as the app stops): Python 3.11's ``asyncio.wait_for`` returned
    the wake-up and lost the cancel, and the stop waited for ever while the worker went on
    pushing inside the next tests."""
    steps = 0

    async def step() -> None:
        nonlocal steps
        steps += 1

    worker = Worker("calendar-push", step, poll_seconds=60)
    worker.start()
    await asyncio.sleep(0.05)  # waiting for a wake-up
    worker.wake()
    loop = asyncio.get_running_loop()
    asked = loop.time()
    stopping = asyncio.ensure_future(worker.stop())
    done, _ = await asyncio.wait({stopping}, timeout=2)
    assert done, "the stop waits for a worker that goes on"
    assert loop.time() - asked < 1
    assert not worker.running
    ran = steps
    await asyncio.sleep(0.1)
    assert steps == ran, "nothing runs after the stop"


async def test_a_lease_keeper_whose_renewal_swallows_the_cancel_still_stops() -> None:
    """nats-py's request waits with ``asyncio.wait_for``, which on Python 3.11 returns a
    reply that came in the same turn as the cancel and drops the cancel: a keeper stopped
    then went on renewing, and the scheduler stopping it waited for ever (a test's app
    that did not shut down in 60 s)."""
    lease = Lease(cast(JetStreamContext, None), key="test", ttl_seconds=3)
    renewing = asyncio.Event()

    async def renew(*, again: bool = True) -> bool:
        renewing.set()
        # The reply arrives with the cancel: wait_for returns it and drops the cancel.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.2)
        return True

    lease.renew = renew  # type: ignore[method-assign]
    keeper = lease.keeper()
    keeper.start()
    await asyncio.wait_for(renewing.wait(), timeout=2)
    stopping = asyncio.ensure_future(keeper.stop())
    done, _ = await asyncio.wait({stopping}, timeout=3)
    assert done, "the keeper's stop waits for a keeper that goes on renewing"
    assert not keeper.running


async def test_a_standby_waiting_for_the_lease_stops_when_its_cancel_is_swallowed() -> None:
    """A standby replica's wait for the lease (another holds it) ends once it is stopping,
    even when the look at the lease swallowed the cancel the same way."""
    lease = Lease(cast(JetStreamContext, None), key="test", ttl_seconds=3)
    looked = asyncio.Event()
    stopping = False

    async def try_acquire() -> bool:
        looked.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.2)
        return False  # another replica holds it

    lease.try_acquire = try_acquire  # type: ignore[method-assign]
    waiting = asyncio.ensure_future(lease.acquire(lambda: stopping))
    await asyncio.wait_for(looked.wait(), timeout=2)
    stopping = True
    waiting.cancel()
    done, _ = await asyncio.wait({waiting}, timeout=3)
    assert done, "the wait for the lease goes on after its stop"
    assert waiting.result() is False, "a stopped wait does not hold the lease"


async def test_a_service_stopping_while_nats_is_away_stops_when_its_cancel_is_swallowed(
    tmp_path: Path,
) -> None:
    """A service shut down while NATS is away: the connect that lost the cancel fails as
    NATS is away, and the retry loop must still end instead of trying for ever."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'away.db'}")
    messaging = Messaging("booking", "nats://127.0.0.1:9", UnitOfWork(engine))
    tries: list[int] = []

    async def connect_losing_the_cancel(*_: object, **__: object) -> None:
        tries.append(1)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(1.0)  # where the stop's cancel lands
        raise ConnectionRefusedError("NATS is away")

    messaging.broker.connect = connect_losing_the_cancel  # type: ignore[method-assign]
    messaging.start()
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    try:
        asked = loop.time()
        await asyncio.wait_for(messaging.stop(), timeout=5)
        assert loop.time() - asked < 2.5, "the stop waited for the connect loop to give up"
        after_stop = len(tries)
        await asyncio.sleep(3)  # longer than a retry's wait and connect together
        assert len(tries) == after_stop, "still trying to connect after the stop"
    finally:
        await engine.dispose()
