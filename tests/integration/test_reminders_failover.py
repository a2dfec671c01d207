"""Reminders as real processes: ``kill -9`` in the middle of a burst of sends, and a standby
taking over the scheduler lease from a killed active process."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.reminders_support import (
    Booking,
    Process,
    Sandbox,
    process_env,
    publish,
    running_sandbox,
)
from tests.support import AUTH, eventually, sqlite_url

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as running:
        yield running


async def outbound_counts(sandbox: Sandbox, prefix: str) -> Counter[str]:
    state = await sandbox.state()
    return Counter(
        m["to"]
        for m in state["messages"]
        if m["direction"] == "outbound-api" and m["to"].startswith(prefix)
    )


async def test_kill_9_during_a_burst_then_restart_sends_each_message_once(
    tmp_path: Path, nats_url: str, sandbox: Sandbox
) -> None:
    prefix = "+1212777"
    env = process_env(
        sqlite_url(tmp_path, "reminders"),
        nats_url,
        sandbox.url,
        SMS_RATE_PER_SECOND="25",
        # NATS stays up here: the dead process's texts may be handed on sooner.
        SMS_QUEUE_ACK_WAIT_SECONDS="6",
    )
    # Slow answers keep several sends in flight at the moment of the kill: the provider
    # creates those messages, the dead process never records them.
    await sandbox.fault(to=prefix + "*", delay_ms=300)
    first = Process(env, tmp_path / "first.log").start()
    second: Process | None = None
    try:
        await first.wait_role("active")
        burst = [Booking(phone=f"{prefix}{i:04d}") for i in range(40)]
        await publish(nats_url, *(b.booked() for b in burst))

        async def some_arrived() -> bool:
            arrived = [r for r in (await sandbox.state())["requests"] if r["to"].startswith(prefix)]
            return len(arrived) >= 10

        await eventually(some_arrived, timeout=30, what="the burst to be under way")
        first.kill9()
        in_flight_or_done = sum((await outbound_counts(sandbox, prefix)).values())
        assert in_flight_or_done < len(burst), "killed in the middle, not after"

        second = Process(env, tmp_path / "second.log").start()

        async def all_arrived() -> Counter[str] | None:
            counts = await outbound_counts(sandbox, prefix)
            return counts if len(counts) == len(burst) else None

        counts = await eventually(all_arrived, timeout=45, what="every message of the burst")
        await second.wait_role("active")
        assert set(counts.values()) == {1}, f"sent twice: {[p for p, n in counts.items() if n > 1]}"

        async with httpx.AsyncClient(base_url=second.url, headers=AUTH) as http:

            async def settled() -> list[dict[str, object]] | None:
                rows: list[dict[str, object]] = []
                params: dict[str, object] = {"limit": 200}
                while True:  # every page of the log (at most 200 a page)
                    page = await http.get("/v1/messages", params=params)
                    rows += page.json()
                    if "X-Next-Cursor" not in page.headers:
                        break
                    params = {"limit": 200, "cursor": page.headers["X-Next-Cursor"]}
                mine = [r for r in rows if str(r["phone"]).startswith(prefix)]
                done = [r for r in mine if r["status"] != "submitting" and r["provider_sid"]]
                return mine if len(done) == len(burst) == len(mine) else None

            rows = await eventually(settled, timeout=30, what="the log to hold every send")
        sandbox_sids = {
            m["sid"] for m in (await sandbox.state())["messages"] if m["to"].startswith(prefix)
        }
        assert {r["provider_sid"] for r in rows} == sandbox_sids
        # The sends in flight at the kill reached the provider, unrecorded: the restart
        # found them there instead of sending them again.
        assert "sms.reconciled" in second.log(), "no send was looked up at the provider"
    finally:
        await sandbox._call("DELETE", "/_sandbox/faults")
        first.stop()
        if second is not None:
            second.stop()


async def test_the_standby_takes_over_after_kill_9_of_the_active(
    tmp_path: Path, nats_url: str, sandbox: Sandbox
) -> None:
    database = sqlite_url(tmp_path, "reminders")
    active = Process(process_env(database, nats_url, sandbox.url), tmp_path / "a.log").start()
    standby: Process | None = None
    try:
        await active.wait_role("active")
        standby = Process(process_env(database, nats_url, sandbox.url), tmp_path / "b.log").start()
        await standby.wait_role("standby")

        before = Booking()
        await publish(nats_url, before.booked())
        await sandbox.wait_for(before.phone, 1, status="delivered", timeout=20)

        active.kill9()
        killed_at = time.monotonic()
        await standby.wait_role("active", timeout=20)
        takeover = time.monotonic() - killed_at
        assert takeover < 10, f"took {takeover:.1f}s for a 2 s lease"

        after = Booking()
        await publish(nats_url, after.booked())
        await sandbox.wait_for(after.phone, 1, status="delivered", timeout=20)
        assert len(await sandbox.to(before.phone)) == 1
        assert "scheduler.active" in standby.log()
    finally:
        active.stop()
        if standby is not None:
            standby.stop()
