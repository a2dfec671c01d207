"""Booking's settings: the common ones plus its port, database and defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.secretbox import parse_keys
from shared.settings import ServiceSettings

#: The documented development key for calendar passwords. With ``APP_ENV=production`` it
#: is refused: no password is stored or read with it (``shared.secretbox.box_for``).
DEV_BOOKING_SECRET_KEY = "dev-booking-secret-change-me"  # noqa: S105 (documented dev value)


class BookingSettings(ServiceSettings):
    booking_port: int = 8001
    booking_host: str = "127.0.0.1"
    booking_database_url: str | None = None
    public_base_url: str | None = None
    #: Phones typed without a country code are read in this region.
    default_phone_region: str = "US"
    migrate_on_start: bool = True

    # -- calendar sync (the calendar package) ---------------------------------------------
    #: Encrypts calendar passwords at rest. Any string (a Fernet key is used as is, anything
    #: else is hashed into one); several comma-separated keys rotate: the first encrypts,
    #: all decrypt.
    booking_secret_key: str = DEV_BOOKING_SECRET_KEY
    #: A file holding the key instead (Docker/Kubernetes secret); wins over the variable.
    booking_secret_key_file: Path | None = None
    #: Run the push worker, the pull and the reconcile jobs in this process.
    calendar_sync_enabled: bool = True
    #: How often the push worker looks for due pushes when nobody woke it up.
    calendar_push_poll_seconds: float = 5.0
    #: Calendars pushed to at the same time; one calendar is written by one task at a time.
    calendar_push_concurrency: int = 8
    #: First retry delay after a calendar failed; doubles per consecutive failure, capped.
    calendar_retry_base_seconds: float = 2.0
    calendar_retry_max_seconds: float = 300.0
    #: Consecutive failures after which a link is reported as failing (log, GET status).
    calendar_failure_threshold: int = 5
    #: How often pull links are read, and push links compared with the sessions.
    calendar_pull_interval_seconds: float = 300.0
    calendar_reconcile_interval_seconds: float = 900.0
    #: Seconds the pull/reconcile lease lives without renewal; a standby takes over after it.
    calendar_lease_seconds: float = Field(default=10.0, ge=1)
    #: How far ahead busy time is read from outside calendars (days).
    calendar_pull_horizon_days: int = 120
    #: Timeout of one request to an outside calendar.
    calendar_http_timeout_seconds: float = 15.0

    # -- waitlist (the waitlist package) --------------------------------------------------
    #: How long an offer of a freed slot stays open before it passes to the next entry.
    waitlist_offer_seconds: float = Field(default=15 * 60, gt=0)
    #: Seconds the lapse loop's lease (``booking-scheduler``) lives without renewal.
    waitlist_lease_seconds: float = Field(default=10.0, ge=1)
    #: How often the lease holder looks for offers made by other replicas.
    waitlist_poll_seconds: float = Field(default=5.0, gt=0)

    @property
    def database_url(self) -> str:
        return self.booking_database_url or self.sqlite_url("booking")

    @property
    def base_url(self) -> str:
        return (self.public_base_url or f"http://127.0.0.1:{self.booking_port}").rstrip("/")

    def secret_keys(self) -> list[str]:
        """The calendar-password keys, newest first (from the file when one is named)."""
        raw = (
            self.booking_secret_key_file.read_text()
            if self.booking_secret_key_file is not None
            else self.booking_secret_key
        )
        return parse_keys(raw)

    @property
    def secret_key_is_dev_value(self) -> bool:
        return DEV_BOOKING_SECRET_KEY in self.secret_keys()

    def development_defaults(self) -> list[str]:
        found = super().development_defaults()
        try:
            dev_key = self.secret_key_is_dev_value
        except OSError as exc:
            raise ValueError(f"BOOKING_SECRET_KEY_FILE cannot be read: {exc.strerror}") from exc
        if dev_key:
            found.append("BOOKING_SECRET_KEY is the documented development value")
        return found
