"""``python -m services.referrals`` serves the API; ``… migrate`` only migrates the database."""

from __future__ import annotations

import logging
import sys

import uvicorn

from services.referrals.app import create_app
from services.referrals.migrate import upgrade
from services.referrals.settings import ReferralsSettings
from shared.logging import configure_logging


def main() -> None:
    settings = ReferralsSettings()
    configure_logging(settings.log_level)
    if settings.log_level.upper() != "DEBUG":
        # A line per job added and per webhook POST says nothing our own log lines do not;
        # their warnings and errors (missed jobs, failing jobs) still show.
        for noisy in ("apscheduler.scheduler", "apscheduler.executors", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if sys.argv[1:] == ["migrate"]:
        upgrade(settings.database_url)
        return
    uvicorn.run(
        create_app(settings),
        host=settings.referrals_host,
        port=settings.referrals_port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


if __name__ == "__main__":
    main()
