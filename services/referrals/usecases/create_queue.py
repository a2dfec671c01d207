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

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from services.referrals.codes import DiagnosisCode
from services.referrals.domain import ReferralAlreadyLive
from services.referrals.schemas import ReferralIn
from services.referrals.usecases import creating
from shared.auth import Scope
from shared.batches import Batches
from shared.errors import DomainError

#: Creates written per transaction.
MAX_BATCH = 64


@dataclass(frozen=True)
class CreateRequest:
    data: ReferralIn
    codes: list[DiagnosisCode]
    actor: str
    within: Scope


#: A create's answer: its referral, or its refusal.
Outcome = creating.Created | DomainError


class CreateQueue:
    """The creates waiting for the next batch (:class:`shared.batches.Batches`)."""

    def __init__(self) -> None:
        self._app: Any = None
        self._creates: Batches[CreateRequest, Outcome] = Batches(
            "referral-creates", self._write, max_batch=MAX_BATCH
        )

    @property
    def batches(self) -> int:
        return self._creates.batches

    def start(self, app: Any) -> None:
        self._app = app
        self._creates.start()

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Write what is queued, then stop (a deploy's SIGTERM answers the creates it has)."""
        await self._creates.stop(drain_seconds)

    async def create(self, app: Any, request: CreateRequest) -> creating.Created:
        if not self._creates.running:  # not started (tools, tests of a use case): alone
            return await create_alone(app, request)
        return await _answer(self._creates.run(request))

    async def _write(self, requests: list[CreateRequest]) -> list[Outcome]:
        return await _write(self._app, requests)


async def create_alone(app: Any, request: CreateRequest) -> creating.Created:
    """One create in a transaction of its own."""

    async def alone() -> Outcome:
        return (await _write(app, [request]))[0]

    return await _answer(alone())


async def _answer(written: Awaitable[Outcome]) -> creating.Created:
    """The referral created, or its refusal raised. An ``IntegrityError`` (a create tried
    alone) is two concurrent creates on PostgreSQL: the partial unique index decided."""
    try:
        outcome = await written
    except IntegrityError as exc:
        raise ReferralAlreadyLive() from exc
    if isinstance(outcome, DomainError):
        raise outcome
    return outcome


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
