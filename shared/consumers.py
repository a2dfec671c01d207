"""Durable pull consumers: applying events once, retries and the dead-letter stream.

A consumer here is a durable pull consumer named ``<service>-<purpose>``. Its handler runs
inside one database transaction together with an inbox row, so an event applied once is
never applied twice; the events of one fetched batch share that transaction
(:mod:`shared.consuming`), each acked once it has committed. A handler that raises is
NACKed with a growing delay; on the last delivery, or at once when the message cannot even
be parsed, the raw message goes to ``dlq.<stream>.<consumer>`` with the error, and the
consumer carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import nats.errors
import nats.js.errors
import structlog
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from faststream.nats.subscriber.usecases.stream_pull_subscriber import PullStreamSubscriber
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from shared.broker import jetstream, publish_raw
from shared.consuming import InboxBatch, Prepare
from shared.events import (
    CloudEvent,
    Payload,
    Subscription,
    dlq_subject,
    parse_event,
)
from shared.logging import safe_error, scrub
from shared.uow import UnitOfWork

log = structlog.get_logger(__name__)

P = TypeVar("P")
M = TypeVar("M", bound=Payload)


class Handler(Protocol[P]):
    """Applies one event of payload ``P`` inside the consumer's transaction."""

    def __call__(self, session: AsyncSession, event: CloudEvent[P], /) -> Awaitable[None]: ...


class Task(Protocol[P]):
    """Works on one message of payload ``P`` outside any transaction (it may take a while:
    the message is kept in progress meanwhile); ``delivered`` counts the deliveries."""

    def __call__(self, event: CloudEvent[P], delivered: int, /) -> Awaitable[None]: ...


EventHandler = Handler[Any]

#: Dead-letter after this many deliveries unless a consumer says otherwise.
DEFAULT_MAX_DELIVER = 5
#: How long one pull waits for messages. A message arriving meanwhile is delivered at
#: once, so a longer wait costs no latency; it only spaces the pull requests out at idle
#: (two per pull and consumer). After the server restarts, a consumer's pull is lost with
#: it and the next one goes out after at most this long.
PULL_WAIT_SECONDS = 5.0


class QuietPullSubscriber(PullStreamSubscriber):
    """FastStream's pull subscriber, minus a traceback every so often at idle.

    nats-py's ``fetch`` lets the built-in ``TimeoutError`` out when a pull's deadline runs
    out between its two requests (``_fetch_n``: ``raise asyncio.TimeoutError``), where it
    otherwise raises ``nats.errors.TimeoutError``. FastStream's loop suppresses only the
    latter, so the built-in one ends the task; FastStream's supervisor then logs an ERROR
    with a traceback and restarts it. An empty pull is no error: go on pulling.
    """

    __slots__ = ()

    async def _consume_pull(self, cb: Any) -> None:
        while self.running:
            try:
                await super()._consume_pull(cb)
            except TimeoutError:
                continue  # an empty pull, see the class docstring


class Deferred(Exception):
    """Raised by a task whose work another process holds right now: the message comes
    back after ``seconds``, without a warning (it is not a failure)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"deferred {seconds:.1f} s")
        self.seconds = seconds


@dataclass
class Consumer(Generic[P]):
    """One durable pull consumer of one subject and the handler that applies its events.

    ``Consumer[SessionEvent]`` takes a handler of ``CloudEvent[SessionEvent]``. Build it
    from the contract with :meth:`of`; when ``payload`` is set, an event carrying another
    payload is dead-lettered rather than handed to the handler."""

    service: str
    purpose: str
    stream: str
    subject: str
    handler: Handler[P]
    max_deliver: int = DEFAULT_MAX_DELIVER
    ack_wait_seconds: float = 30.0
    retry_base_seconds: float = 1.0
    dead_lettered: list[str] = field(default_factory=list)
    payload: type[P] | None = None
    #: Instead of a handler inside a transaction with an inbox row: a task run outside
    #: one, for work that talks to the outside world (it must be safe to repeat).
    task: Task[P] | None = None
    #: Messages fetched, and worked on concurrently, at once; a handler's batch shares
    #: one transaction.
    batch_size: int = 16
    #: Loads, in the batch's transaction before its handlers run, what they will read.
    prepare: Prepare | None = None
    #: Set by :func:`register_consumer`: its transactions and events applied so far.
    inbox_batch: InboxBatch | None = field(default=None, repr=False)

    @staticmethod
    def of(
        subscription: Subscription[M],
        handler: Handler[M],
        *,
        max_deliver: int = DEFAULT_MAX_DELIVER,
        ack_wait_seconds: float = 30.0,
        retry_base_seconds: float = 1.0,
        prepare: Prepare | None = None,
    ) -> Consumer[M]:
        """The consumer of a subscription declared in ``shared.events``.

        ``Consumer.of(events.REMINDERS_SESSIONS, on_session)`` where ``on_session`` takes
        ``CloudEvent[SessionEvent]``: mypy checks the handler against the subscription's
        payload (``events.REMINDERS_SESSIONS`` is a ``Subscription[SessionEvent]``).
        """
        return Consumer(
            service=subscription.service,
            purpose=subscription.purpose,
            stream=subscription.stream,
            subject=subscription.subject,
            handler=handler,
            max_deliver=max_deliver,
            ack_wait_seconds=ack_wait_seconds,
            retry_base_seconds=retry_base_seconds,
            payload=subscription.payload,
            prepare=prepare,
        )

    @staticmethod
    def task_of(
        subscription: Subscription[M],
        task: Task[M],
        *,
        max_deliver: int = DEFAULT_MAX_DELIVER,
        ack_wait_seconds: float = 30.0,
        retry_base_seconds: float = 1.0,
        batch_size: int = 16,
    ) -> Consumer[M]:
        """A work-queue consumer: ``task`` runs outside any transaction, concurrently for a
        fetched batch, and the message stays in progress while it runs."""

        async def no_handler(session: AsyncSession, event: CloudEvent[M], /) -> None:
            raise AssertionError("a task consumer has no transactional handler")

        consumer = Consumer.of(
            subscription,
            no_handler,
            max_deliver=max_deliver,
            ack_wait_seconds=ack_wait_seconds,
            retry_base_seconds=retry_base_seconds,
        )
        consumer.task = task
        consumer.batch_size = batch_size
        return consumer

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


async def ensure_consumer(js: JetStreamContext, consumer: Consumer[Any]) -> None:
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
    consumer: Consumer[Any],
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


def register_consumer(broker: NatsBroker, consumer: Consumer[Any], uow: UnitOfWork) -> None:
    """Attach ``consumer`` to the broker: parse, apply once, ack; or retry; or dead-letter.

    The handler runs in ``uow.write()``, with the other events of its fetched batch: their
    after-commit hooks (the outbox relay, a planner) run once the transaction has
    committed, before the acks. An event that fails is applied again alone, so only its
    own message is retried or dead-lettered."""
    batch = InboxBatch(consumer.durable, uow, consumer.handler, consumer.prepare)
    consumer.inbox_batch = batch
    subscriber = broker.subscriber(
        consumer.subject,
        stream=JStream(consumer.stream, declare=False),
        durable=consumer.durable,
        config=consumer.consumer_config(),
        pull_sub=PullSub(batch_size=consumer.batch_size, timeout=PULL_WAIT_SECONDS),
        ack_policy=AckPolicy.MANUAL,
        title=consumer.durable,
    )
    if type(subscriber) is not PullStreamSubscriber:  # pragma: no cover - a FastStream upgrade
        raise TypeError(f"expected FastStream's PullStreamSubscriber, got {type(subscriber)}")

    class Direct(QuietPullSubscriber):
        """Hands each fetched message straight to ``consume_raw``: FastStream's per-message
        pipeline (middlewares, dependency solving, log context) cost as much CPU as
        applying the event; nothing of it is used here. A task consumer's messages are
        started and the pulls go on (:func:`start_raw`); its tasks end with the loop."""

        __slots__ = ()

        async def _consume_pull(self, cb: Any) -> None:
            if consumer.task is None:
                await super()._consume_pull(consume_raw)
                return
            try:
                await super()._consume_pull(start_raw)
            finally:
                tasks = list(in_flight)
                for task in tasks:
                    task.cancel()  # as FastStream's task group did with a batch's tasks
                await asyncio.gather(*tasks, return_exceptions=True)

    subscriber.__class__ = Direct  # same slots: only _consume_pull differs

    in_flight: set[asyncio.Task[None]] = set()
    room = asyncio.Event()

    async def start_raw(raw: Msg) -> None:
        """Start a task consumer's message and return once fewer than ``batch_size`` are in
        flight: the next pull no longer waits for a batch's slowest task, so a paced sender
        always has texts waiting for their slots (FastStream's loop pulled again only once
        a whole batch had ended: a 50/s limit was observed at 43-46/s). Each message is
        marked in progress from its start (``_in_progress``)."""
        task = asyncio.create_task(consume_raw(raw))
        in_flight.add(task)
        task.add_done_callback(ended)
        while len(in_flight) >= consumer.batch_size:
            room.clear()
            await room.wait()

    def ended(task: asyncio.Task[None]) -> None:
        in_flight.discard(task)
        room.set()

    async def consume_raw(raw: Msg) -> None:
        try:
            await consume_msg(raw)
        except Exception as exc:  # e.g. the DLQ publish failed: redelivered after ack wait
            log.warning("event.unsettled", consumer=consumer.durable, error=safe_error(exc))

    async def consume(message: NatsMessage) -> None:
        """What FastStream would call (it documents the subscriber); fetches bypass it."""
        await consume_msg(message.raw_message)

    async def consume_msg(raw: Msg) -> None:
        meta = raw.metadata
        js = jetstream(broker)
        try:
            event = parse_event(raw.data, expected_type=raw.subject)
            if consumer.payload is not None and not isinstance(event.data, consumer.payload):
                raise ValueError(
                    f"{raw.subject} carries {type(event.data).__name__}, "
                    f"not {consumer.payload.__name__}"
                )
        except (ValidationError, ValueError) as exc:
            await dead_letter(
                js,
                consumer,
                raw.data,
                subject=raw.subject,
                stream_seq=meta.sequence.stream,
                error=f"malformed event: {safe_error(exc)}",
            )
            await raw.term()
            return
        try:
            if consumer.task is not None:
                async with _in_progress(raw, consumer.ack_wait_seconds):
                    await consumer.task(event, meta.num_delivered)
            else:
                await batch.apply(event)
        except Deferred as deferred:
            await raw.nak(delay=deferred.seconds)  # not a failure: someone else has it
            return
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
                await raw.term()
            else:
                log.warning(
                    "event.retry",
                    consumer=consumer.durable,
                    type=event.type,
                    delivered=delivered,
                    error=type(exc).__name__,
                )
                await raw.nak(delay=consumer.retry_delay(delivered))
            return
        await raw.ack()

    subscriber(consume)


@contextlib.asynccontextmanager
async def _in_progress(raw: Any, ack_wait_seconds: float) -> AsyncIterator[None]:
    """Tell the server, every third of the ack wait, that the message is being worked on:
    a live consumer keeps it however long the work takes; a dead one's is redelivered to
    another after one ack wait."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(ack_wait_seconds / 3)
            with contextlib.suppress(nats.errors.Error):
                await raw.in_progress()

    heartbeat = asyncio.create_task(beat())
    try:
        yield
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat


async def watch_max_deliveries(broker: NatsBroker, consumers: Sequence[Consumer[Any]]) -> None:
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
    "Consumer",
    "Deferred",
    "EventHandler",
    "Handler",
    "QuietPullSubscriber",
    "Task",
    "dead_letter",
    "ensure_consumer",
    "register_consumer",
    "watch_max_deliveries",
]
