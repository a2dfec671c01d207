"""NATS JetStream plumbing: the connection, the streams and publishing.

The durable consumers that apply events (retries, the dead-letter stream) are in
:mod:`shared.consumers`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import nats.errors
import nats.js.errors
import structlog
from faststream.nats import NatsBroker
from faststream.security import SASLPlaintext
from nats.js import api
from nats.js.client import JetStreamContext

from shared.events import (
    DLQ_STREAM,
    STREAM_SUBJECTS,
    WORK_QUEUE_STREAMS,
)
from shared.natsauth import parse_servers

log = structlog.get_logger(__name__)


#: FastStream's own per-message lines ("Received", "Processed") go to this logger at
#: DEBUG. It propagates to the root logger, so the service's LOG_LEVEL decides; at the
#: default INFO an idle or busy service prints no line per message.
BROKER_LOGGER = logging.getLogger("shared.broker.faststream")

DUPLICATE_WINDOW_SECONDS = 120


def make_broker(nats_url: str, name: str) -> NatsBroker:
    """A broker that keeps reconnecting for as long as the service lives.

    ``nats_url`` may list several servers, comma-separated (a cluster). The user and
    password it carries are passed apart, so they also hold for the servers the cluster
    announces, and never show in ``/asyncapi.json`` or logs."""
    servers = parse_servers(nats_url)
    return NatsBroker(
        servers.urls,
        security=(
            SASLPlaintext(username=servers.user, password=servers.password or "")
            if servers.user is not None
            else None
        ),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=2,
        logger=BROKER_LOGGER,
        log_level=logging.DEBUG,
    )


def jetstream(broker: NatsBroker) -> JetStreamContext:
    return broker.connection.jetstream()


async def ensure_streams(
    js: JetStreamContext, names: Sequence[str] = tuple(STREAM_SUBJECTS), *, replicas: int = 1
) -> None:
    """Create the streams, or bring an existing one's subjects and replicas up to date.
    File storage; ``replicas`` copies on as many cluster nodes (``NATS_REPLICAS``)."""
    for name in names:
        config = api.StreamConfig(
            name=name,
            subjects=list(STREAM_SUBJECTS[name]),
            retention=(
                api.RetentionPolicy.WORK_QUEUE
                if name in WORK_QUEUE_STREAMS
                else api.RetentionPolicy.LIMITS
            ),
            storage=api.StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
            num_replicas=replicas,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)


async def publish_raw(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    msg_id: str,
    headers: dict[str, str] | None = None,
) -> api.PubAck:
    """Publish to JetStream and wait for the PubAck; ``msg_id`` makes a republish a no-op."""
    return await js.publish(
        subject, payload, timeout=5, headers={**(headers or {}), "Nats-Msg-Id": msg_id}
    )


__all__ = [
    "BROKER_LOGGER",
    "DLQ_STREAM",
    "ensure_streams",
    "jetstream",
    "make_broker",
    "publish_raw",
]
