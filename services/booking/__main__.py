"""``python -m services.booking`` serves the API; ``… migrate`` only migrates the database."""

from __future__ import annotations

import sys

import uvicorn

from services.booking.app import create_app
from services.booking.migrate import upgrade
from services.booking.settings import BookingSettings
from shared.logging import configure_logging


def main() -> None:
    settings = BookingSettings()
    configure_logging(settings.log_level)
    if sys.argv[1:] == ["migrate"]:
        upgrade(settings.database_url)
        return
    uvicorn.run(
        create_app(settings),
        host=settings.booking_host,
        port=settings.booking_port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


if __name__ == "__main__":
    main()
