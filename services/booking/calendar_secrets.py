"""Calendar passwords at rest: Fernet (AES-128-CBC + HMAC-SHA256) under ``BOOKING_SECRET_KEY``.

A key is any string: a Fernet key (urlsafe base64 of 32 bytes) is used as it is, anything
else is hashed (SHA-256) into one. Several keys rotate: the first encrypts, every one of
them decrypts, so a new key goes first and the old one stays until re-encrypted rows no
longer need it.

The documented development key is refused under ``APP_ENV=production``: the service
starts (the rest of booking does not need it) but stores and reads no password, and says
so in the error of the request or of the link.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretKeyUnusable(Exception):
    """No usable key to encrypt or decrypt a calendar password (a configuration problem)."""


def fernet_key(secret: str) -> bytes:
    """``secret`` itself when it is a Fernet key, else a Fernet key derived from it."""
    try:
        if len(base64.urlsafe_b64decode(secret.encode())) == 32:
            return secret.encode()
    except (binascii.Error, ValueError):
        pass
    return base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest())


class CredentialBox:
    """Encrypts and decrypts calendar passwords; refuses to when its keys are unusable."""

    def __init__(self, keys: list[str], *, refused_because: str | None = None) -> None:
        self._refused_because = refused_because
        self._fernet = MultiFernet([Fernet(fernet_key(k)) for k in keys]) if keys else None
        if self._fernet is None and refused_because is None:
            self._refused_because = "no BOOKING_SECRET_KEY is configured"

    @property
    def usable(self) -> bool:
        return self._refused_because is None

    def _require(self) -> MultiFernet:
        if self._refused_because is not None or self._fernet is None:
            raise SecretKeyUnusable(
                f"calendar passwords cannot be stored or read: {self._refused_because}"
            )
        return self._fernet

    def encrypt(self, password: str) -> str:
        return self._require().encrypt(password.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._require().decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise SecretKeyUnusable(
                "the stored calendar password does not decrypt with BOOKING_SECRET_KEY "
                "(was the key changed without keeping the old one after it?)"
            ) from exc


def box_for(keys: list[str], *, production: bool, uses_dev_key: bool) -> CredentialBox:
    """The box the service runs with: the dev key is refused in production."""
    if production and uses_dev_key:
        return CredentialBox(
            [],
            refused_because=(
                "BOOKING_SECRET_KEY is the documented development value and APP_ENV is "
                "production; set a secret key (or BOOKING_SECRET_KEY_FILE)"
            ),
        )
    return CredentialBox(keys)
