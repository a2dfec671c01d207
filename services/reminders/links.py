"""Signed, expiring links to the pages behind a text (aftercare, referral updates).

A token is ``<id>.<timestamp>.<signature>`` (itsdangerous ``TimestampSigner``). To keep a
text within one SMS the id is a UUID packed into 22 characters and the HMAC-SHA256 is
cut to 96 bits: a link is short, still unforgeable, and carries no health information.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner
from itsdangerous.signer import HMACAlgorithm

AFTERCARE = "aftercare"
REFERRAL = "referral"


class LinkInvalid(Exception):
    """The token was not made by us, or was changed."""


class LinkExpired(Exception):
    """The token is ours but older than its lifetime."""


class _ShortHMAC(HMACAlgorithm):
    """HMAC-SHA256 truncated to 12 bytes (16 base64 characters)."""

    def __init__(self) -> None:
        super().__init__(hashlib.sha256)

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return hmac.new(key, msg=value, digestmod=hashlib.sha256).digest()[:12]


def pack_id(ident: str) -> str:
    """A UUID as 22 URL-safe characters; any other id as ``~<id>``."""
    try:
        raw = uuid.UUID(ident).bytes
    except ValueError:
        return "~" + ident
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unpack_id(packed: str) -> str:
    if packed.startswith("~"):
        return packed[1:]
    try:
        return str(uuid.UUID(bytes=base64.urlsafe_b64decode(packed + "==")))
    except (ValueError, TypeError) as exc:
        raise LinkInvalid("malformed id") from exc


class Links:
    """Makes and reads the links of one purpose each (the salt keeps them apart)."""

    def __init__(
        self,
        secret: str,
        base_url: str,
        max_age_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_age_seconds = max_age_seconds
        self._secret = secret
        self._clock = clock

    def _signer(self, purpose: str) -> TimestampSigner:
        clock = self._clock

        class _Signer(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(clock())

        return _Signer(self._secret, salt=purpose, algorithm=_ShortHMAC())

    def token(self, purpose: str, ident: str) -> str:
        return self._signer(purpose).sign(pack_id(ident)).decode()

    def read(self, purpose: str, token: str) -> str:
        """The id inside ``token``; raises :class:`LinkInvalid` or :class:`LinkExpired`."""
        try:
            packed = self._signer(purpose).unsign(token, max_age=self.max_age_seconds)
        except SignatureExpired as exc:
            raise LinkExpired(str(exc)) from exc
        except BadSignature as exc:
            raise LinkInvalid(str(exc)) from exc
        return unpack_id(packed.decode())

    def aftercare_url(self, session_id: str) -> str:
        return f"{self.base_url}/a/{self.token(AFTERCARE, session_id)}"

    def referral_url(self, referral_id: str) -> str:
        return f"{self.base_url}/r/{self.token(REFERRAL, referral_id)}"
