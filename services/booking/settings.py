"""Booking's settings: the common ones plus its port, database and defaults."""

from __future__ import annotations

from shared.settings import ServiceSettings


class BookingSettings(ServiceSettings):
    booking_port: int = 8001
    booking_host: str = "127.0.0.1"
    booking_database_url: str | None = None
    public_base_url: str | None = None
    #: Phones typed without a country code are read in this region.
    default_phone_region: str = "US"
    migrate_on_start: bool = True

    @property
    def database_url(self) -> str:
        return self.booking_database_url or self.sqlite_url("booking")

    @property
    def base_url(self) -> str:
        return (self.public_base_url or f"http://127.0.0.1:{self.booking_port}").rstrip("/")
