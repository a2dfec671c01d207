"""``python -m services.reminders`` serves the API and, when it holds the lease, the
scheduler; ``… migrate`` only migrates the database."""

from __future__ import annotations

import sys

import uvicorn

from services.reminders.app import create_app
from services.reminders.migrate import upgrade
from services.reminders.settings import RemindersSettings
from shared.logging import configure_logging


def main() -> None:
    settings = RemindersSettings()
    configure_logging(settings.log_level)
    if sys.argv[1:] == ["migrate"]:
        upgrade(settings.database_url)
        return
    uvicorn.run(
        create_app(settings),
        host=settings.reminders_host,
        port=settings.reminders_port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


if __name__ == "__main__":
    main()
