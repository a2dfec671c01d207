"""Referrals created together share one transaction.

Under load the front desk's creates arrive side by side. Each alone is a transaction of
its own: on SQLite the one write lock, a BEGIN and a COMMIT, and each statement's round
trips to the driver's thread. Here a create waits for the batch being written: the
creates queued meanwhile are read together in the next transaction (one statement; the
plans locked first on PostgreSQL, in plan order), checked against each other too (two for one partner and plan
in one batch: the second is refused as it would be after the first), and written with
one statement per table; each caller gets its own answer or its own refusal. If the
batch fails as a whole (a constraint another replica's commit tripped), each create is
tried alone, so one caller's failure is never another's.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError

from services.referrals.codes import DiagnosisCode
from services.referrals.domain import ReferralAlreadyLive
from services.referrals.schemas import ReferralIn
from services.referrals.usecases import creating
from shared.auth import Scope
from shared.errors import DomainError
from shared.worker import Worker

log = structlog.get_logger(__name__)

#: Creates written per transaction.
MAX_BATCH = 64


@dataclass(frozen=True)
class CreateRequest:
    data: ReferralIn
    codes: list[DiagnosisCode]
    actor: str
    within: Scope


Waiting = tuple[CreateRequest, "asyncio.Future[creating.Created]"]


class CreateQueue:
    """The creates waiting for the next batch, written on a :class:`Worker`."""

    def __init__(self) -> None:
        self._app: Any = None
        self._pending: list[Waiting] = []
        self._worker = Worker("referral-creates", self._step, poll_seconds=None)
        self.batches = 0

    def start(self, app: Any) -> None:
        self._app = app
        self._worker.start()

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Write what is queued, then stop (a deploy's SIGTERM answers the creates it has)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_seconds):
                while self._pending:
                    self._worker.wake()
                    await asyncio.sleep(0.01)
        await self._worker.stop()
        for _, future in self._pending:
            if not future.done():
                future.set_exception(RuntimeError("the service is stopping"))
        self._pending.clear()

    async def create(self, app: Any, request: CreateRequest) -> creating.Created:
        if not self._worker.running:  # not started (tools, tests of a use case): alone
            return await create_alone(app, request)
        future: asyncio.Future[creating.Created] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        self._worker.wake()
        return await future

    async def _step(self) -> bool:
        if self._pending:
            batch = self._pending[:MAX_BATCH]
            del self._pending[: len(batch)]
            await self._apply(batch)
        return bool(self._pending)

    async def _apply(self, batch: list[Waiting]) -> None:
        try:
            outcomes = await _write(self._app, [request for request, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc=_refusal(exc))
                return
            log.info("referrals.batch_retry_alone", size=len(batch), error=type(exc).__name__)
            for waiting in batch:
                await self._apply([waiting])
            return
        self.batches += 1
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            _settle(future, outcome)


async def create_alone(app: Any, request: CreateRequest) -> creating.Created:
    """One create in a transaction of its own."""
    try:
        outcome = (await _write(app, [request]))[0]
    except IntegrityError as exc:
        raise ReferralAlreadyLive() from exc
    if isinstance(outcome, DomainError):
        raise outcome
    return outcome


def _refusal(exc: Exception) -> Exception:
    # Two concurrent creates on PostgreSQL: the partial unique index decided.
    return ReferralAlreadyLive() if isinstance(exc, IntegrityError) else exc


Outcome = creating.Created | DomainError


def _settle(
    future: asyncio.Future[creating.Created],
    outcome: Outcome | None = None,
    *,
    exc: Exception | None = None,
) -> None:
    if future.done():
        return
    if exc is None and isinstance(outcome, DomainError):
        exc = outcome
    if exc is not None:
        future.set_exception(exc)
    elif isinstance(outcome, creating.Created):
        future.set_result(outcome)


async def _write(app: Any, requests: list[CreateRequest]) -> list[Outcome]:
    """Write ``requests`` in one transaction; each outcome its referral or its refusal.
    Raises only what fails the transaction itself."""
    outcomes: list[Outcome] = [DomainError("not written")] * len(requests)
    order = sorted(range(len(requests)), key=lambda i: requests[i].data.plan_id)
    async with app.uow.write() as session:
        writes = creating.Writes()
        keys = [(requests[i].data.plan_id, requests[i].data.partner_id) for i in order]
        read = await creating.read_batch_facts(session, keys)
        for i, facts in zip(order, read, strict=True):
            request = requests[i]
            data = request.data
            try:
                creating.check(facts, data.plan_id, data.partner_id, request.within, writes)
            except DomainError as exc:
                outcomes[i] = exc
                continue
            outcomes[i] = creating.add_referral(
                session,
                app,
                facts,
                writes,
                reason=data.reason,
                codes=request.codes,
                urgency=data.urgency,
                actor=request.actor,
            )
        await writes.flush(session, app)
    return outcomes
