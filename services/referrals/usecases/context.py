"""What every referrals use case is given: the unit of work, the secret box, the code table
and the rules' settings. Built whole once, in ``app.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from services.referrals.codes import CodeTable, default_table
from shared.outbound import OutboundPolicy
from shared.secretbox import SecretBox
from shared.uow import UnitOfWork

#: The events' ``source``, and the actor of what no person did.
SOURCE = "referrals"
SYSTEM = "system"

#: After-commit hooks (``shared.uow.after_commit``) a use case asks for, registered on the
#: unit of work in ``app.py``: the webhook dispatcher (a delivery was queued) and the
#: deadline planner (a referral was sent). Each wake-up costs the woken loop a
#: transaction, so only a transaction that has work for it asks.
DISPATCHER = "dispatcher"
DEADLINES = "deadlines"


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

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.uow.clock
