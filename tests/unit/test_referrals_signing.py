"""Partner webhook signatures, secrets at rest, and the settings that guard them."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.fernet import Fernet

from services.referrals.settings import DEV_SECRET_KEY, ReferralsSettings
from services.referrals.signing import (
    InvalidSignature,
    compute,
    new_webhook_secret,
    sign,
    verify,
)
from shared.secretbox import SecretBox, SecretUnavailable

SECRET = "whsec_test"
BODY = b'{"resourceType":"Bundle","type":"collection"}'
T = 1_780_000_000


def test_the_header_is_t_and_a_hex_hmac_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, timestamp=T) == f"t={T},v1={expected}"
    assert compute(SECRET, BODY, T) == expected


def test_a_fresh_signature_verifies_and_returns_its_timestamp() -> None:
    assert verify(SECRET, sign(SECRET, BODY, T), BODY, now=T + 10) == T


@pytest.mark.parametrize(
    ("secret", "body"), [("whsec_other", BODY), (SECRET, BODY + b" "), (SECRET, b"{}")]
)
def test_another_secret_or_a_changed_body_does_not_verify(secret: str, body: bytes) -> None:
    with pytest.raises(InvalidSignature, match="does not match"):
        verify(secret, sign(SECRET, BODY, T), body, now=T)


def test_a_replay_older_than_five_minutes_is_refused() -> None:
    header = sign(SECRET, BODY, T)
    assert verify(SECRET, header, BODY, now=T + 300) == T
    with pytest.raises(InvalidSignature, match="replay"):
        verify(SECRET, header, BODY, now=T + 301)


def test_a_timestamp_far_in_the_future_is_refused() -> None:
    with pytest.raises(InvalidSignature, match="future"):
        verify(SECRET, sign(SECRET, BODY, T + 301), BODY, now=T)


def test_a_rotating_sender_may_sign_twice() -> None:
    header = f"t={T},v1={compute('whsec_old', BODY, T)},v1={compute(SECRET, BODY, T)}"
    assert verify(SECRET, header, BODY, now=T) == T


@pytest.mark.parametrize(
    "header", [None, "", "garbage", f"t={T}", "v1=abc", "t=soon,v1=abc", f"t={T},v1"]
)
def test_malformed_headers_are_refused(header: str | None) -> None:
    with pytest.raises(InvalidSignature):
        verify(SECRET, header, BODY, now=T)


def test_webhook_secrets_are_sealed_and_open_again_only_with_the_key() -> None:
    box = SecretBox(Fernet.generate_key().decode())
    secret = new_webhook_secret()
    sealed = box.encrypt(secret)
    assert secret not in sealed and box.decrypt(sealed) == secret
    with pytest.raises(SecretUnavailable):
        SecretBox(Fernet.generate_key().decode()).decrypt(sealed)


def test_a_rotated_key_still_opens_what_the_old_one_sealed() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed = SecretBox(old).encrypt("whsec_1")
    assert SecretBox(f"{new},{old}").decrypt(sealed) == "whsec_1"


def test_production_refuses_the_documented_dev_key_and_bad_keys() -> None:
    with pytest.raises(ValueError, match="development value"):
        ReferralsSettings(
            app_env="production",
            admin_api_key="real-admin-key",
            nats_url="nats://referrals:real@nats:4222",
        )
    with pytest.raises(ValueError, match="Fernet"):
        ReferralsSettings(referrals_secret_key="not-a-key")
    ok = ReferralsSettings(
        app_env="production",
        admin_api_key="real-admin-key",
        nats_url="nats://referrals:real@nats:4222",
        referrals_secret_key=Fernet.generate_key().decode(),
    )
    assert ok.production
    assert ReferralsSettings().referrals_secret_key == DEV_SECRET_KEY


def test_on_sqlite_the_job_store_gets_a_sibling_file_and_on_postgres_the_same_database() -> None:
    lite = ReferralsSettings(referrals_database_url="sqlite+aiosqlite:////srv/var/referrals.db")
    assert lite.jobstore_url == "sqlite:////srv/var/referrals-jobs.db"
    pg = ReferralsSettings(referrals_database_url="postgresql://u:p@db:5432/referrals")
    assert pg.jobstore_url == "postgresql+psycopg://u:p@db:5432/referrals"


def test_secrets_sealed_before_the_shared_box_still_open_with_the_same_key() -> None:
    """Webhook secrets stored by the earlier box were plain Fernet tokens of the key."""
    key = Fernet.generate_key().decode()
    stored = Fernet(key.encode()).encrypt(b"whsec_stored").decode()
    box = SecretBox(f"{Fernet.generate_key().decode()},{key}", setting="REFERRALS_SECRET_KEY")
    assert box.decrypt(stored) == "whsec_stored"
    assert (
        SecretBox(DEV_SECRET_KEY).decrypt(Fernet(DEV_SECRET_KEY.encode()).encrypt(b"x").decode())
        == "x"
    )
