"""Secrets at rest that must come back (calendar passwords, webhook signing secrets).

API keys are only compared, so they are stored hashed (``shared.auth``). A secret the
service must use again is encrypted with Fernet (AES-128-CBC + HMAC-SHA256). Several keys
rotate: the first encrypts, every one of them decrypts, so a new key goes first and the
old one stays until no stored value needs it. A key is any string: a Fernet key (urlsafe
base64 of 32 bytes) is used as it is, anything else is hashed (SHA-256) into one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from shared.errors import Unavailable

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

# ``cryptography`` (~7 MB) is imported on the first encrypt or decrypt: a service with no
# stored secret to use (no calendar linked, no webhook sent yet) never loads it.


class SecretUnavailable(Unavailable):
    """No usable key, or a stored value that no configured key opens (a configuration
    problem: 503, not the caller's fault)."""


def fernet_key(secret: str) -> bytes:
    """``secret`` itself when it is a Fernet key, else a Fernet key derived from it."""
    try:
        if len(base64.urlsafe_b64decode(secret.encode())) == 32:
            return secret.encode()
    except (binascii.Error, ValueError):
        pass
    return base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest())


def parse_keys(keys: str | Sequence[str]) -> list[str]:
    """Keys as a comma-separated setting or a list; blanks dropped, order kept."""
    items = keys.split(",") if isinstance(keys, str) else list(keys)
    return [k.strip() for k in items if k.strip()]


class SecretBox:
    """Encrypts and decrypts; refuses to (with the reason) when its keys are unusable.

    ``setting`` names the environment variable in error messages, so an operator knows
    which key to look at.
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        *,
        setting: str = "SECRET_KEY",
        refused_because: str | None = None,
    ) -> None:
        self._keys = [fernet_key(k) for k in parse_keys(keys)]
        self.setting = setting
        self._refused_because = refused_because
        self._fernet: MultiFernet | None = None
        if not self._keys and refused_because is None:
            self._refused_because = f"no {setting} is configured"

    @property
    def usable(self) -> bool:
        return self._refused_because is None

    def _require(self) -> MultiFernet:
        if self._refused_because is not None or not self._keys:
            raise SecretUnavailable(f"secrets cannot be stored or read: {self._refused_because}")
        if self._fernet is None:
            from cryptography.fernet import Fernet, MultiFernet

            self._fernet = MultiFernet([Fernet(k) for k in self._keys])
        return self._fernet

    def encrypt(self, plaintext: str) -> str:
        return self._require().encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        fernet = self._require()
        from cryptography.fernet import InvalidToken

        try:
            return fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise SecretUnavailable(
                f"a stored secret does not decrypt with {self.setting} "
                "(was the key changed without keeping the old one after it?)"
            ) from exc


def box_for(
    keys: str | Sequence[str], *, setting: str, production: bool, uses_dev_key: bool
) -> SecretBox:
    """The box a service runs with: the documented development key is refused in
    production (the service starts, but stores and reads no secret, and says why)."""
    if production and uses_dev_key:
        return SecretBox(
            [],
            setting=setting,
            refused_because=(
                f"{setting} is the documented development value and APP_ENV is production"
            ),
        )
    return SecretBox(keys, setting=setting)
