"""What every referrals use case is given: the unit of work, the secret box, the code table
and the rules' settings. Built whole once, in ``app.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from services.referrals.codes import CodeTable, default_table
from shared.outbound import OutboundPolicy
from shared.secretbox import SecretBox
from shared.uow import UnitOfWork

if TYPE_CHECKING:
    from services.referrals.usecases.create_queue import CreateQueue

#: The events' ``source``, and the actor of what no person did.
SOURCE = "referrals"
SYSTEM = "system"

#: After-commit hooks (``shared.uow.after_commit``) a use case asks for, registered on the
#: unit of work in ``app.py``: the webhook dispatcher (a delivery was queued) and the
#: deadline planner (a referral was sent). Each wake-up costs the woken loop a
#: transaction, so only a transaction that has work for it asks.
DISPATCHER = "dispatcher"
DEADLINES = "deadlines"


class DirectSender(Protocol):
    lease_seconds: float

    def available(self) -> bool: ...

    def send(self, prepared: Any) -> None: ...


class Handoff:
    """The local webhook dispatcher, for a use case that queues a delivery it can send
    straight away.

    Such a delivery is written already claimed (one attempt, held for the dispatcher's
    lease) with everything its Bundle needs read in the same transaction, and handed over
    after the commit: no claim transaction, no re-read. If this process dies before the
    answer is recorded, the lease runs out and any replica's dispatcher sends it again
    (at least once, as for a claimed one). Without a dispatcher bound, or when it has no
    free capacity, the delivery is queued as pending for the claiming loop.
    """

    def __init__(self) -> None:
        self._sender: DirectSender | None = None

    def bind(self, sender: DirectSender | None) -> None:
        self._sender = sender

    def lease_seconds(self) -> float | None:
        """The lease of a delivery written claimed, or ``None``: queue it as pending."""
        sender = self._sender
        if sender is None or not sender.available():
            return None
        return sender.lease_seconds

    def send(self, prepared: Any) -> None:
        if self._sender is not None:
            self._sender.send(prepared)


@dataclass(frozen=True)
class Referrals:
    uow: UnitOfWork
    secretbox: SecretBox
    codes: CodeTable = field(default_factory=default_table)
    default_phone_region: str = "US"
    production: bool = False
    #: Which webhook URLs may be called (OUTBOUND_ALLOWED_HOSTS); checked at every request.
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)
    clinic_name: str = "Medical massage clinic"
    base_url: str = "http://127.0.0.1:8003"
    accept_hours: float = 72.0
    expire_after_hours: float = 48.0
    webhook_retry_hours: float = 24.0
    #: The local dispatcher (bound by ``WebhookDispatcher.start``).
    handoff: Handoff = field(default_factory=Handoff)
    #: Creates written together (started in ``app.py``); ``None``: each alone.
    creates: CreateQueue | None = None

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.uow.clock
