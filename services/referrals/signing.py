"""Partner webhook signatures: HMAC-SHA256 over a timestamp and the raw body.

Header: ``X-Referral-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">``,
keyed with the partner's webhook secret. A verifier refuses a timestamp more than five
minutes away from its clock, so a captured request cannot be replayed later; inside that
window a receiver dedupes on ``X-Referral-Delivery`` (the delivery id, the Bundle's id).
Partners may copy :func:`verify` as it is: it needs only the standard library.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

SIGNATURE_HEADER = "X-Referral-Signature"
DELIVERY_HEADER = "X-Referral-Delivery"
EVENT_HEADER = "X-Referral-Event"
#: How far the signed timestamp may be from the verifier's clock.
TOLERANCE_SECONDS = 300


def new_webhook_secret() -> str:
    """A fresh signing secret, shown to the partner once (stored encrypted, see
    ``shared.secretbox``: the service must sign with it again)."""
    return f"whsec_{secrets.token_urlsafe(32)}"


class InvalidSignature(Exception):
    """The request is not signed by the holder of the secret, or not recently."""


def compute(secret: str, body: bytes, timestamp: int) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>.<body>"``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Referral-Signature`` value for ``body`` sent now (or at ``timestamp``)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={compute(secret, body, t)}"


def verify(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    now: float | None = None,
    tolerance_seconds: int = TOLERANCE_SECONDS,
) -> int:
    """Check ``header`` against ``body``; return the signed timestamp or raise.

    Several ``v1`` values are allowed (a sender rotating secrets signs with both).
    """
    if not header:
        raise InvalidSignature(f"missing {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise InvalidSignature(f"malformed {SIGNATURE_HEADER} element {part.strip()!r}")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError as exc:
                raise InvalidSignature(f"timestamp {value!r} is not unix seconds") from exc
        elif key == "v1":
            candidates.append(value)
    if timestamp is None:
        raise InvalidSignature("no timestamp (t=) in the signature")
    if not candidates:
        raise InvalidSignature("no v1 signature in the header")
    current = time.time() if now is None else now
    age = current - timestamp
    if age > tolerance_seconds:
        raise InvalidSignature(
            f"signature is {int(age)} s old, more than {tolerance_seconds} s: refused as a replay"
        )
    if -age > tolerance_seconds:
        raise InvalidSignature(f"signature is dated {int(-age)} s in the future")
    expected = compute(secret, body, timestamp)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise InvalidSignature("signature does not match the body and the secret")
    return timestamp
