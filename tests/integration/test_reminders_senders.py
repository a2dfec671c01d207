"""Several reminders replicas send (issue 13): the texts due wait in the ``reminders.due``
work queue and every replica takes from it, each text once, and the sender's rate limit
holds for all of them together (the pace is shared through NATS KV)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reminders_support import Booking, Process, Sandbox, process_env, publish, running_sandbox
from tests.support import eventually, sqlite_url

pytestmark = pytest.mark.asyncio(loop_scope="session")

PREFIX = "+1212666"
RATE = 8
BURST = 40


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as running:
        yield running


async def test_two_replicas_share_the_sending_and_the_rate_limit(
    tmp_path: Path, nats_url: str, sandbox: Sandbox
) -> None:
    database = sqlite_url(tmp_path, "reminders")
    # DEBUG: each replica's "sms.sent" lines say which one sent.
    settings = {"SMS_RATE_PER_SECOND": str(RATE), "SMS_CONCURRENCY": "2", "LOG_LEVEL": "DEBUG"}
    # Slow answers keep each replica's few send slots busy, so both take work.
    await sandbox.fault(to=PREFIX + "*", delay_ms=200)
    first = Process(process_env(database, nats_url, sandbox.url, **settings), tmp_path / "a.log")
    second = Process(process_env(database, nats_url, sandbox.url, **settings), tmp_path / "b.log")
    try:
        first.start()
        await first.wait_role("active")
        second.start()
        await second.wait_role("standby")

        burst = [Booking(phone=f"{PREFIX}{i:04d}") for i in range(BURST)]
        await publish(nats_url, *(b.booked() for b in burst))

        async def all_sent() -> list[dict[str, object]] | None:
            state = await sandbox.state()
            sent = [
                m
                for m in state["messages"]
                if m["direction"] == "outbound-api" and str(m["to"]).startswith(PREFIX)
            ]
            return sent if len(sent) >= BURST else None

        sent = await eventually(all_sent, timeout=60, what="every text of the burst")
        counts = Counter(str(m["to"]) for m in sent)
        assert set(counts.values()) == {1} and len(counts) == BURST, "each client once"

        # Both replicas sent: the standby is a sender too.
        assert "sms.sent" in first.log() and "sms.sent" in second.log()

        # Together within the limit: evenly spaced slots of 1/RATE s, whoever sends.
        arrivals = sorted(float(str(m["received_at"])) for m in sent)
        span = arrivals[-1] - arrivals[0]
        assert span >= (BURST - 1) / RATE * 0.9, f"{BURST} texts in {span:.2f}s: over {RATE}/s"
        busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
        assert busiest <= RATE + 2, f"{busiest} texts within one second: over {RATE}/s"
    finally:
        await sandbox._call("DELETE", "/_sandbox/faults")
        first.stop()
        second.stop()
