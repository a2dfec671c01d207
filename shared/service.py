"""What every service's composition root needs around NATS: the broker, the durable
consumers, the outbox relay, a connection made whenever NATS is reachable, and the
``/healthz``, ``/readyz``, ``/metrics`` and ``/asyncapi.json`` routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from uvicorn.main import STARTUP_FAILURE

from shared import asyncapi
from shared.broker import ensure_streams, jetstream, make_broker, publish_raw
from shared.consumers import (
    Consumer,
    ensure_consumer,
    register_consumer,
    watch_max_deliveries,
)
from shared.lease import ensure_lease_bucket
from shared.logging import configure_logging
from shared.natsauth import redact
from shared.outbox import OUTBOX, OutboxRelay
from shared.uow import UnitOfWork
from shared.worker import Worker

log = structlog.get_logger(__name__)


class Messaging:
    """A service's link to NATS JetStream.

    HTTP keeps working while NATS is away: the outbox fills, and the relay empties it once
    :meth:`start`'s background connection succeeds (it retries with backoff forever).
    """

    def __init__(
        self,
        service: str,
        nats_url: str,
        uow: UnitOfWork,
        *,
        outbox_poll_seconds: float = 1.0,
        replicas: int = 1,
    ) -> None:
        self.service = service
        self.replicas = replicas
        self.nats_url = nats_url
        self.uow = uow
        self.broker = make_broker(nats_url, service)
        self.relay = OutboxRelay(uow.sessions, self._publish, poll_seconds=outbox_poll_seconds)
        uow.on_commit(OUTBOX, self.relay.wake)
        self.consumers: list[Consumer[Any]] = []
        self.ready = asyncio.Event()
        self._on_ready: list[Callable[[], None]] = []
        #: Connects in the background: a :class:`Worker`, whose stop holds even when
        #: nats-py's connect swallows the cancel (with NATS away, a loop of its own
        #: retried for ever).
        self._connector = Worker("nats-connect", self._connect_once, poll_seconds=None)
        self._retry_in = 0.2

    def add_consumers(self, consumers: Sequence[Consumer[Any]]) -> None:
        for consumer in consumers:
            register_consumer(self.broker, consumer, self.uow)
            self.consumers.append(consumer)

    def when_ready(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once NATS is connected and the consumers are running."""
        self._on_ready.append(callback)

    @property
    def connected(self) -> bool:
        connection = self.broker.connection if self.ready.is_set() else None
        return connection is not None and connection.is_connected

    async def _publish(self, subject: str, payload: bytes, msg_id: str) -> None:
        if not self.ready.is_set():
            raise ConnectionError("NATS is not connected yet")
        await publish_raw(jetstream(self.broker), subject, payload, msg_id)

    def start(self) -> None:
        self.relay.start()
        self._connector.start()

    async def stop(self) -> None:
        await self._connector.stop()
        await self.relay.stop()
        with contextlib.suppress(Exception):
            await self.broker.stop()

    async def _connect_once(self) -> float | None:
        """One try (the worker then idles until the stop); after a failure, the seconds
        until the next try: 0.2, doubling up to 5."""
        if self.ready.is_set():
            return None
        try:
            await self.broker.connect()
            js = jetstream(self.broker)
            await ensure_streams(js, replicas=self.replicas)
            await ensure_lease_bucket(js, replicas=self.replicas)
            for consumer in self.consumers:
                await ensure_consumer(js, consumer)
            await self.broker.start()
            await watch_max_deliveries(self.broker, self.consumers)
        except Exception as exc:
            delay, self._retry_in = self._retry_in, min(self._retry_in * 2, 5.0)
            log.warning("nats.unavailable", error=f"{type(exc).__name__}: {exc}", retry_in=delay)
            with contextlib.suppress(Exception):
                await self.broker.stop()
            return delay
        self.ready.set()
        self.relay.wake()  # rows committed while NATS was away leave now, not at the next poll
        log.info("nats.ready", service=self.service, url=redact(self.nats_url))
        for callback in self._on_ready:
            callback()
        return None


def add_ops_routes(
    app: FastAPI,
    engine: AsyncEngine,
    messaging: Messaging,
    details: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """``/healthz`` (the process answers), ``/readyz`` (database and NATS reachable; 503
    otherwise), ``/metrics`` (Prometheus) and ``/asyncapi.json`` (the AsyncAPI 3.0
    document of the events ``messaging.service`` publishes and consumes, generated from
    ``shared.events``). ``details`` adds informative fields to ``/readyz``.
    ``app.state.messaging`` is the service's link to NATS (its consumers, for tests)."""
    app.state.messaging = messaging

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = type(exc).__name__
        checks["nats"] = "ok" if messaging.connected else "unavailable"
        ready = all(v == "ok" for v in checks.values())
        body: dict[str, Any] = {"ready": ready, **checks, **(details() if details else {})}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    events_document: list[dict[str, Any]] = []  # built on the first request, then kept

    @app.get("/asyncapi.json", tags=["ops"], response_class=JSONResponse)
    async def asyncapi_json() -> JSONResponse:
        """The AsyncAPI 3.0 document of the events this service publishes and consumes."""
        if not events_document:
            events_document.append(
                asyncapi.document(
                    messaging.service,
                    title=f"{app.title} events",
                    version=app.version,
                    nats_url=messaging.nats_url,
                )
            )
        return JSONResponse(events_document[0])


class QuietServer(uvicorn.Server):
    """uvicorn's server, looking at its own state once a second instead of ten times.

    uvicorn's main loop wakes every 0.1 s to refresh the ``Date`` header (once a second)
    and to see whether it should exit. On this machine those wake-ups alone cost an idle
    bare app 0.33 % of a core against 0.07 % at one a second (30 s of each side by side),
    most of a service's idle CPU (issue 12's floor is 0.5 %). A signal wakes the loop at
    once, so a shutdown does not wait for the next look.
    """

    TICK_SECONDS = 1.0

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._asked_to_exit: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._asked_to_exit = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            # A multiple of ten: every look refreshes the Date header, as uvicorn's tenth does.
            counter = (counter + 10) % 864_000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.TICK_SECONDS):
                    await self._asked_to_exit.wait()
            should_exit = await self.on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and self._asked_to_exit is not None:
            self._loop.call_soon_threadsafe(self._asked_to_exit.set)


def run_service(
    create_app: Callable[[Any], FastAPI],
    settings: Any,
    *,
    host: str,
    port: int,
    upgrade: Callable[[str], None],
    argv: Sequence[str],
    module: str | None = None,
) -> None:
    """A service's ``__main__``: ``migrate`` only migrates the database; anything else serves.

    ``settings`` is the service's settings object (log level, database URL). With
    ``module`` (``services.booking``), the start-up migration runs as ``python -m
    <module> migrate`` in a child process before the server starts: Alembic, its scripts
    and a blocking engine then never stay in the server's memory (about 12 MB of the
    100 MB a service may use at idle).
    """
    configure_logging(settings.log_level)
    if logging.getLevelName(settings.log_level.upper()) != logging.DEBUG:
        # APScheduler logs every job run at INFO ("Running job", "executed successfully"):
        # a line per poll of every periodic job. Its warnings and errors still show.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    if list(argv) == ["migrate"]:
        upgrade(settings.database_url)
        return
    if module is not None and getattr(settings, "migrate_on_start", False):
        done = subprocess.run([sys.executable, "-m", module, "migrate"], check=False)
        if done.returncode != 0:
            raise SystemExit(f"{module}: the start-up migration failed ({done.returncode})")
        settings = settings.model_copy(update={"migrate_on_start": False})
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )
    server = QuietServer(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:  # as uvicorn.run: a port in use, a lifespan that failed
        sys.exit(STARTUP_FAILURE)
