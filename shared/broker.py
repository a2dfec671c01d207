"""NATS JetStream plumbing: streams, durable pull consumers, retries and the dead-letter stream.

A consumer here is a durable pull consumer named ``<service>-<purpose>``. Its handler runs
inside one database transaction together with an inbox row, so an event applied once is
never applied twice. A handler that raises is NACKed with a growing delay; on the last
delivery, or at once when the message cannot even be parsed, the raw message goes to
``dlq.<stream>.<consumer>`` with the error, and the consumer carries on.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.js import api
from nats.js.client import JetStreamContext
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import transaction
from shared.events import DLQ_STREAM, STREAM_SUBJECTS, CloudEvent, dlq_subject, parse_event
from shared.inbox import claim
from shared.logging import safe_error, scrub

log = structlog.get_logger(__name__)

EventHandler = Callable[[AsyncSession, CloudEvent[Any]], Awaitable[None]]

#: Dead-letter after this many deliveries unless a consumer says otherwise.
DEFAULT_MAX_DELIVER = 5
DUPLICATE_WINDOW_SECONDS = 120


def make_broker(nats_url: str, name: str) -> NatsBroker:
    """A broker that keeps reconnecting for as long as the service lives."""
    return NatsBroker(
        nats_url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=2,
    )


def jetstream(broker: NatsBroker) -> JetStreamContext:
    return broker.connection.jetstream()


async def ensure_streams(
    js: JetStreamContext, names: Sequence[str] = tuple(STREAM_SUBJECTS)
) -> None:
    """Create the streams, or bring an existing one's subjects up to date. File storage."""
    for name in names:
        config = api.StreamConfig(
            name=name,
            subjects=[STREAM_SUBJECTS[name]],
            storage=api.StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
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


@dataclass
class Consumer:
    """One durable pull consumer of one subject and the handler that applies its events."""

    service: str
    purpose: str
    stream: str
    subject: str
    handler: EventHandler
    max_deliver: int = DEFAULT_MAX_DELIVER
    ack_wait_seconds: float = 30.0
    retry_base_seconds: float = 1.0
    after_commit: Callable[[], None] | None = None
    dead_lettered: list[str] = field(default_factory=list)

    @property
    def durable(self) -> str:
        return f"{self.service}-{self.purpose}"

    def consumer_config(self) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            filter_subject=self.subject,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            max_deliver=self.max_deliver,
            ack_wait=self.ack_wait_seconds,
        )

    def retry_delay(self, delivered: int) -> float:
        """Exponential backoff: base, 2×base, 4×base … capped at five minutes."""
        return float(min(self.retry_base_seconds * 2 ** max(delivered - 1, 0), 300.0))


async def ensure_consumer(js: JetStreamContext, consumer: Consumer) -> None:
    """Create the durable consumer or update it when the code changed its config."""
    config = consumer.consumer_config()
    try:
        info = await js.consumer_info(consumer.stream, consumer.durable)
    except nats.js.errors.NotFoundError:
        await js.add_consumer(consumer.stream, config)
        return
    current = info.config
    if (
        current.max_deliver == config.max_deliver
        and current.ack_wait == config.ack_wait
        and current.filter_subject == config.filter_subject
    ):
        return
    try:
        await js.add_consumer(consumer.stream, config)  # the server updates in place
    except nats.js.errors.BadRequestError:
        log.warning("consumer.recreated", consumer=consumer.durable)
        await js.delete_consumer(consumer.stream, consumer.durable)
        await js.add_consumer(consumer.stream, config)


async def dead_letter(
    js: JetStreamContext,
    consumer: Consumer,
    payload: bytes,
    *,
    subject: str,
    stream_seq: int,
    error: str,
) -> None:
    """Park a message in the DLQ stream with the reason; one copy per stream sequence."""
    await publish_raw(
        js,
        dlq_subject(consumer.stream, consumer.durable),
        payload,
        msg_id=f"dlq:{consumer.stream}:{consumer.durable}:{stream_seq}",
        headers={
            "Dlq-Original-Subject": subject,
            "Dlq-Stream-Sequence": str(stream_seq),
            # Only an exception's type and a scrubbed message: never names, phones, bodies.
            "Dlq-Error": scrub(error, 500),
        },
    )
    consumer.dead_lettered.append(subject)
    log.warning(
        "event.dead_lettered",
        consumer=consumer.durable,
        subject=subject,
        seq=stream_seq,
        error=error[:200],
    )


def register_consumer(
    broker: NatsBroker, consumer: Consumer, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Attach ``consumer`` to the broker: parse, apply once, ack; or retry; or dead-letter."""
    subscriber = broker.subscriber(
        consumer.subject,
        stream=JStream(consumer.stream, declare=False),
        durable=consumer.durable,
        config=consumer.consumer_config(),
        pull_sub=PullSub(batch_size=16, timeout=1.0),
        ack_policy=AckPolicy.MANUAL,
        title=consumer.durable,
    )

    async def consume(message: NatsMessage) -> None:
        raw = message.raw_message
        meta = raw.metadata
        js = jetstream(broker)
        try:
            event = parse_event(raw.data, expected_type=raw.subject)
        except (ValidationError, ValueError) as exc:
            await dead_letter(
                js,
                consumer,
                raw.data,
                subject=raw.subject,
                stream_seq=meta.sequence.stream,
                error=f"malformed event: {safe_error(exc)}",
            )
            await message.reject()
            return
        try:
            async with transaction(sessions, write=True) as session:
                if await claim(session, consumer.durable, event.id):
                    await consumer.handler(session, event)
        except Exception as exc:
            delivered = meta.num_delivered
            if delivered >= consumer.max_deliver:
                await dead_letter(
                    js,
                    consumer,
                    raw.data,
                    subject=raw.subject,
                    stream_seq=meta.sequence.stream,
                    error=safe_error(exc),
                )
                await message.reject()
            else:
                log.warning(
                    "event.retry",
                    consumer=consumer.durable,
                    type=event.type,
                    delivered=delivered,
                    error=type(exc).__name__,
                )
                await message.nack(delay=consumer.retry_delay(delivered))
            return
        await message.ack()
        if consumer.after_commit is not None:
            consumer.after_commit()

    subscriber(consume)


async def watch_max_deliveries(broker: NatsBroker, consumers: Sequence[Consumer]) -> None:
    """Dead-letter what the server gave up on without our handler deciding (e.g. ack timeouts).

    After ``max_deliver`` the server only publishes an advisory with the stream sequence;
    the message itself is fetched from the stream.
    """
    nc = broker.connection
    js = jetstream(broker)
    by_name = {c.durable: c for c in consumers}

    async def on_advisory(msg: Any) -> None:
        try:
            advisory = json.loads(msg.data)
            consumer = by_name[advisory["consumer"]]
            stored = await js.get_msg(advisory["stream"], advisory["stream_seq"])
        except (KeyError, ValueError, nats.errors.Error) as exc:
            log.warning("advisory.unusable", error=safe_error(exc))
            return
        await dead_letter(
            js,
            consumer,
            stored.data or b"",
            subject=stored.subject or "",
            stream_seq=advisory["stream_seq"],
            error="max deliveries reached without an answer from the handler",
        )

    for consumer in consumers:
        await nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{consumer.stream}.{consumer.durable}",
            cb=on_advisory,
        )


__all__ = [
    "DLQ_STREAM",
    "Consumer",
    "dead_letter",
    "ensure_consumer",
    "ensure_streams",
    "jetstream",
    "make_broker",
    "publish_raw",
    "register_consumer",
    "watch_max_deliveries",
]
