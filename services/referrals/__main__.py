"""``python -m services.referrals`` serves the API; ``… migrate`` only migrates the database."""

from __future__ import annotations

# isort: off
import shared.lean  # noqa: F401  (first: keeps unused modules out, see there)
# isort: on

import logging
import sys

from services.referrals.app import create_app
from services.referrals.migrate import upgrade
from services.referrals.settings import ReferralsSettings
from shared.service import run_service


def main() -> None:
    settings = ReferralsSettings()
    if settings.log_level.upper() != "DEBUG":
        # A line per job added and per webhook POST says nothing our own log lines do not;
        # their warnings and errors (missed jobs, failing jobs) still show.
        for noisy in ("apscheduler.scheduler", "apscheduler.executors", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    run_service(
        create_app,
        settings,
        host=settings.referrals_host,
        port=settings.referrals_port,
        upgrade=upgrade,
        argv=sys.argv[1:],
        module="services.referrals",
    )


if __name__ == "__main__":
    main()
