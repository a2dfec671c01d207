"""``python -m services.reminders`` serves the API and, when it holds the lease, the
scheduler; ``… migrate`` only migrates the database."""

from __future__ import annotations

# isort: off
import shared.lean  # noqa: F401  (first: keeps unused modules out, see there)
# isort: on

import sys

from services.reminders.app import create_app
from services.reminders.migrate import upgrade
from services.reminders.settings import RemindersSettings
from shared.service import run_service


def main() -> None:
    settings = RemindersSettings()
    run_service(
        create_app,
        settings,
        host=settings.reminders_host,
        port=settings.reminders_port,
        upgrade=upgrade,
        argv=sys.argv[1:],
        module="services.reminders",
    )


if __name__ == "__main__":
    main()
