"""APP_ENV is one of three exact values, and production refuses every development default
at start, naming each one (CONTRACT "Ports and settings")."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from services.booking.settings import BookingSettings
from services.referrals.settings import ReferralsSettings
from services.reminders.settings import RemindersSettings
from shared.settings import ServiceSettings

# Production connects to NATS as the service's own user (tests/integration/test_nats_security.py).
REAL: dict[str, Any] = {
    "admin_api_key": "a-real-admin-key",
    "nats_url": "nats://service:a-real-password@nats:4222",
}
BOOKING_REAL: dict[str, Any] = {**REAL, "booking_secret_key": "a-real-booking-key"}
REFERRALS_REAL: dict[str, Any] = {**REAL, "referrals_secret_key": Fernet.generate_key().decode()}
REMINDERS_REAL: dict[str, Any] = {
    **REAL,
    "reminders_link_secret": "a-real-link-secret",
    "twilio_account_sid": "AC" + "1" * 32,
    "twilio_auth_token": "a-real-twilio-token",
    "twilio_messaging_service_sid": "MG" + "1" * 32,
}


@pytest.mark.parametrize("value", ["Production", "prod", "PRODUCTION", "dev", "", "staging"])
def test_an_unknown_app_env_refuses_to_start(value: str) -> None:
    with pytest.raises(ValidationError, match="APP_ENV must be exactly one of"):
        ServiceSettings(app_env=value)


def test_an_unknown_app_env_from_the_environment_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "Production")
    with pytest.raises(ValidationError, match="'Production'"):
        BookingSettings()


@pytest.mark.parametrize("value", ["development", "test", "production"])
def test_the_three_values_are_accepted(value: str) -> None:
    assert BookingSettings(app_env=value, **BOOKING_REAL).app_env == value


@pytest.mark.parametrize(
    ("cls", "real", "default", "named"),
    [
        (BookingSettings, BOOKING_REAL, "admin_api_key", "ADMIN_API_KEY"),
        (BookingSettings, BOOKING_REAL, "nats_url", "NATS_URL"),
        (BookingSettings, BOOKING_REAL, "booking_secret_key", "BOOKING_SECRET_KEY"),
        (ReferralsSettings, REFERRALS_REAL, "admin_api_key", "ADMIN_API_KEY"),
        (ReferralsSettings, REFERRALS_REAL, "referrals_secret_key", "REFERRALS_SECRET_KEY"),
        (RemindersSettings, REMINDERS_REAL, "admin_api_key", "ADMIN_API_KEY"),
        (RemindersSettings, REMINDERS_REAL, "reminders_link_secret", "REMINDERS_LINK_SECRET"),
        (RemindersSettings, REMINDERS_REAL, "twilio_account_sid", "TWILIO_ACCOUNT_SID"),
        (RemindersSettings, REMINDERS_REAL, "twilio_auth_token", "TWILIO_AUTH_TOKEN"),
        (
            RemindersSettings,
            REMINDERS_REAL,
            "twilio_messaging_service_sid",
            "TWILIO_FROM_NUMBER",
        ),
    ],
)
def test_production_refuses_each_development_default(
    cls: type[ServiceSettings], real: dict[str, Any], default: str, named: str
) -> None:
    # Everything real but this one setting, left at its development default.
    settings = {k: v for k, v in real.items() if k != default}
    with pytest.raises(ValidationError, match=named):
        cls(app_env="production", **settings)
    # The same values outside production start, and with all real values production starts.
    assert cls(app_env="development", **settings)
    assert cls(app_env="production", **real).app_env == "production"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8025", "http://api.twilio.com", "https://sandbox.example.com"]
)
def test_production_refuses_a_twilio_api_base_url_that_is_not_twilio(url: str) -> None:
    with pytest.raises(ValidationError, match="TWILIO_API_BASE_URL"):
        RemindersSettings(app_env="production", twilio_api_base_url=url, **REMINDERS_REAL)
    assert RemindersSettings(
        app_env="production", twilio_api_base_url="https://api.twilio.com", **REMINDERS_REAL
    )


def test_production_names_every_development_default_at_once() -> None:
    with pytest.raises(ValidationError) as refused:
        RemindersSettings(app_env="production")
    message = str(refused.value)
    for name in (
        "ADMIN_API_KEY",
        "NATS_URL",
        "REMINDERS_LINK_SECRET",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_FROM_NUMBER",
    ):
        assert name in message


def test_each_service_may_write_every_lease_it_holds() -> None:
    """A lease key its NATS user may not write is a permissions violation on every renewal
    (nats-py then drops the connection): booking holds two, reminders paces in its bucket."""
    from services.booking.calendar.sync import LEASE_KEY as CALENDAR
    from services.booking.waitlist.lapses import LEASE_KEY as WAITLIST
    from services.referrals.settings import ReferralsSettings
    from services.reminders.app import SCHEDULER_LEASE
    from services.reminders.pacing import PACE_BUCKET
    from shared.events import subject_matches
    from shared.natsauth import permissions

    def may_publish(user: str, subject: str) -> bool:
        rules = permissions(user)
        assert rules is not None
        allowed = rules["publish"]["allow"]  # type: ignore[index]
        return any(subject_matches(pattern, subject) for pattern in allowed)

    for key in (CALENDAR, WAITLIST):
        assert may_publish("booking", f"$KV.leases.{key}"), key
    assert may_publish("reminders", f"$KV.leases.{SCHEDULER_LEASE}")
    assert may_publish("reminders", f"$KV.{PACE_BUCKET}.pace.abc")
    assert may_publish("referrals", f"$KV.leases.{ReferralsSettings().referrals_lease_key}")
    assert not may_publish("booking", f"$KV.leases.{SCHEDULER_LEASE}"), "not another's lease"
