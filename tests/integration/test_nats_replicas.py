"""``NATS_REPLICAS`` on a real three-node cluster: streams and the lease bucket are created
with the setting and follow it when a service starts with another value."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest

from shared.broker import ensure_streams
from shared.events import STREAM_SUBJECTS
from shared.lease import Lease, ensure_lease_bucket
from shared.natsd import free_port
from tests.support import eventually
from tools.cluster import Cluster

pytestmark = pytest.mark.asyncio(loop_scope="session")

STREAMS = (*STREAM_SUBJECTS, "KV_leases")


async def _retrying(step: Callable[[], Awaitable[None]]) -> None:
    """The cluster elects its JetStream leaders a moment after the nodes are up."""

    async def done() -> bool:
        try:
            await step()
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
            return False
        return True

    await eventually(done, timeout=30, what="JetStream to answer")


async def test_streams_and_the_lease_bucket_follow_nats_replicas(tmp_path: Path) -> None:
    cluster = Cluster(
        tmp_path,
        nats_ports=[free_port() for _ in range(3)],
        route_ports=[free_port() for _ in range(3)],
        service_ports={},
    )
    cluster.start_nats()
    try:
        # As the reminders user: what a service may do is enough to change replicas.
        nc = await nats.connect(cluster.nats_url("reminders").split(","))
        js = nc.jetstream()

        async def ensure(replicas: int) -> None:
            await ensure_streams(js, replicas=replicas)
            await ensure_lease_bucket(js, replicas=replicas)

        async def replicas_are(count: int) -> bool:
            for stream in STREAMS:
                info = await js.stream_info(stream)
                if info.config.num_replicas != count:
                    return False
                peers = (info.cluster.replicas or []) if info.cluster else []
                if len(peers) != count - 1 or not all(p.current for p in peers):
                    return False
            return True

        await _retrying(lambda: ensure(1))
        assert await replicas_are(1)

        await _retrying(lambda: ensure(3))
        await eventually(lambda: replicas_are(3), timeout=30, what="three current replicas")

        lease = Lease(js, key="reminders-scheduler", ttl_seconds=2)
        assert await lease.try_acquire(), "the lease works on the replicated bucket"
        await lease.release()
        await nc.close()
    finally:
        cluster.stop()


async def test_a_renewal_stored_after_its_timeout_does_not_lose_the_lease(nats_url: str) -> None:
    """A cluster electing a leader may store a renewal whose answer never came: the next
    renewal, made from the older revision, must not give the lease up."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_lease_bucket(js)
    lease = Lease(js, key=f"test-{free_port()}", ttl_seconds=5)
    assert await lease.try_acquire()
    stale = lease.revision
    # The renewal that "timed out": stored, its answer lost.
    await js.publish(
        f"$KV.leases.{lease.key}",
        lease.holder.encode(),
        headers={"Nats-Expected-Last-Subject-Sequence": str(stale)},
        msg_ttl=5,
    )
    assert lease.revision == stale
    assert await lease.renew(), "the key still names this holder"
    assert lease.held and lease.revision != stale

    # A stale revision of a key that names another holder is a lost lease, as before.
    other = Lease(js, key=lease.key, ttl_seconds=5, holder="someone-else")
    other.revision = stale
    assert await other.renew() is False
    assert other.revision is None and lease.held
    await nc.close()
