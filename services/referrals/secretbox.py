"""Webhook secrets at rest: encrypted with Fernet, because the service must sign with them.

API keys are only ever compared, so they are stored as hashes (``shared.auth``). A webhook
secret is used as an HMAC key on every delivery, so it has to come back: it is stored
encrypted with the key(s) in ``REFERRALS_SECRET_KEY``. Several comma-separated keys rotate:
the first encrypts, any of them decrypts.
"""

from __future__ import annotations

import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretUnreadable(Exception):
    """A stored secret does not decrypt with any configured key (the key was changed?)."""


class SecretBox:
    def __init__(self, keys: str) -> None:
        fernets = [Fernet(k.strip().encode()) for k in keys.split(",") if k.strip()]
        if not fernets:
            raise ValueError("no Fernet key given")
        self._fernet = MultiFernet(fernets)

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise SecretUnreadable(
                "a stored webhook secret does not decrypt with REFERRALS_SECRET_KEY"
            ) from exc


def new_webhook_secret() -> str:
    """A fresh signing secret, shown to the partner once."""
    return f"whsec_{secrets.token_urlsafe(32)}"
