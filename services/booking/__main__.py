"""``python -m services.booking`` serves the API; ``… migrate`` only migrates the database."""

from __future__ import annotations

# isort: off
import shared.lean  # noqa: F401  (first: keeps unused modules out, see there)
# isort: on

import sys

from services.booking.app import create_app
from services.booking.migrate import upgrade
from services.booking.settings import BookingSettings
from shared.service import run_service


def main() -> None:
    settings = BookingSettings()
    run_service(
        create_app,
        settings,
        host=settings.booking_host,
        port=settings.booking_port,
        upgrade=upgrade,
        argv=sys.argv[1:],
        module="services.booking",
    )


if __name__ == "__main__":
    main()
