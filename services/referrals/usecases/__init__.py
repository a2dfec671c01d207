"""Referrals' use cases, one module per actor; each use case is one transaction that
changes state and queues its events (outbox) and its webhook deliveries.

- ``partners``: the clinic's admin (partners, API keys)
- ``plans``, ``referrals``: clinic staff (care plans; create and cancel referrals)
- ``partner_actions``: a partner with its key (read, accept, decline, schedule, complete,
  report)
- ``from_booking``: booking's client and session events
- ``from_reminders``: reminders' check-in answers (pain scores on plans)
- ``deadlines``, ``webhooks``: the system (reminders and expiries; webhook deliveries)

``lifecycle`` holds the steps they share (a transition with its event, a delivery queued);
the rules themselves are in ``services.referrals.domain``, the reads in ``queries``.
"""

from services.referrals.usecases.context import Referrals

__all__ = ["Referrals"]
