"""Calendar passwords at rest (``shared.secretbox``): Fernet under BOOKING_SECRET_KEY, refused
with the dev key in production, rotation, and the link body's validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from services.booking.schemas import CalendarLinkIn
from services.booking.settings import DEV_BOOKING_SECRET_KEY, BookingSettings
from shared.secretbox import SecretBox, SecretUnavailable, box_for

SETTING = "BOOKING_SECRET_KEY"


def test_a_password_round_trips_and_is_not_stored_readable() -> None:
    box = SecretBox(["a long random secret"], setting=SETTING)
    token = box.encrypt("hunter2")
    assert "hunter2" not in token
    assert box.decrypt(token) == "hunter2"
    assert box.encrypt("hunter2") != token  # random IV: equal passwords do not show


def test_a_fernet_key_is_used_as_it_is() -> None:
    key = Fernet.generate_key().decode()
    token = SecretBox([key], setting=SETTING).encrypt("pw")
    assert Fernet(key.encode()).decrypt(token.encode()) == b"pw"


def test_keys_rotate_the_first_encrypts_and_all_decrypt() -> None:
    old = SecretBox(["old key"], setting=SETTING).encrypt("pw")
    rotated = SecretBox(["new key", "old key"], setting=SETTING)
    assert rotated.decrypt(old) == "pw"
    assert SecretBox(["new key"], setting=SETTING).decrypt(rotated.encrypt("pw")) == "pw"
    with pytest.raises(SecretUnavailable, match="does not decrypt"):
        SecretBox(["new key"], setting=SETTING).decrypt(old)


def test_production_refuses_the_documented_dev_key() -> None:
    # Production refuses to start with it at all (tests/unit/test_security_settings.py);
    # the box refuses it as well, should it ever be built with it.
    with pytest.raises(ValidationError, match="BOOKING_SECRET_KEY"):
        BookingSettings(
            app_env="production", admin_api_key="real", nats_url="nats://booking:real@nats:4222"
        )
    settings = BookingSettings(admin_api_key="real")
    assert settings.secret_key_is_dev_value
    box = box_for(settings.secret_keys(), setting=SETTING, production=True, uses_dev_key=True)
    assert not box.usable
    with pytest.raises(SecretUnavailable, match="BOOKING_SECRET_KEY"):
        box.encrypt("pw")
    assert box_for(
        [DEV_BOOKING_SECRET_KEY], setting=SETTING, production=False, uses_dev_key=True
    ).usable
    assert box_for(["real"], setting=SETTING, production=True, uses_dev_key=False).usable


def test_the_key_can_come_from_a_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "booking_secret_key"
    secret.write_text("from-the-file, older-key\n")
    settings = BookingSettings(booking_secret_key_file=secret)
    assert settings.secret_keys() == ["from-the-file", "older-key"]
    assert not settings.secret_key_is_dev_value


BODY = {
    "owner_type": "therapist",
    "owner_id": "t1",
    "direction": "push",
    "kind": "caldav",
    "url": "https://dav.example.com/ana/work/",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"url": "https://ana:pw@dav.example.com/"}, "not in the URL"),
        ({"url": "file:///etc/passwd"}, "http"),
        ({"url": "webcal://example.com/a.ics"}, "webcal"),
        ({"timezone": "Europe/Atlantis"}, "timezone"),
        ({"direction": "both"}, "direction"),
        ({"password": "x", "extra": 1}, "extra"),
    ],
)
def test_link_bodies_are_validated(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CalendarLinkIn.model_validate({**BODY, **change})


def test_a_webcal_ics_subscription_is_accepted_for_pull() -> None:
    link = CalendarLinkIn.model_validate(
        {**BODY, "direction": "pull", "kind": "ics", "url": "webcal://example.com/a.ics"}
    )
    assert link.url == "webcal://example.com/a.ics"
