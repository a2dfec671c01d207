"""Structured logs (structlog) that never carry a phone number whole, a secret or a body."""

from __future__ import annotations

import logging
import re
from collections.abc import MutableMapping
from typing import Any

import structlog
from pydantic import ValidationError

from shared.phones import mask_phone

_PHONE_KEYS = {"phone", "to", "from_", "from"}
_SECRET_KEYS = {"password", "token", "api_key", "authorization", "secret", "body", "auth_token"}
#: Personal text: never logged, whatever the level.
_PERSONAL_KEYS = {"first_name", "last_name", "full_name", "client_name", "text", "message_body"}
#: Free text that may quote data (exception messages): scrubbed, see :func:`scrub`.
_FREE_TEXT_KEYS = {"error", "reason", "detail", "exc", "exception"}

_PHONEISH = re.compile(r"\+?\d[\d\s().-]{5,}\d")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def scrub(text: str, limit: int = 200) -> str:
    """``text`` fit for a log line or a header: quoted values elided (exception messages
    quote the input: names, bodies), phone-like digit runs masked, one line, at most
    ``limit`` characters."""
    text = " ".join(str(text).split())
    text = _QUOTED.sub("'…'", text)
    text = _PHONEISH.sub(lambda m: mask_phone(m.group(0)), text)
    return text[:limit]


def safe_error(exc: BaseException, limit: int = 200) -> str:
    """The exception's type and a message without data, for logs and dead-letter headers.

    A validation error names its fields and error kinds, never the values.
    """
    name = type(exc).__name__
    if isinstance(exc, ValidationError):
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['type']}"
            for e in exc.errors()[:5]
        )
        return f"{name}: {fields}"[:limit]
    # KeyError's str() is a repr (nested quotes); the message itself scrubs cleanly.
    raw = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
    message = scrub(raw, limit)
    return f"{name}: {message}"[:limit] if message else name


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask phones and drop secrets and message bodies before anything is written."""
    for key in list(event):
        lowered = key.lower()
        if lowered in _PHONE_KEYS and isinstance(event[key], str):
            event[key] = mask_phone(event[key])
        elif lowered in _SECRET_KEYS or lowered in _PERSONAL_KEYS:
            event[key] = "[redacted]"
        elif lowered in _FREE_TEXT_KEYS and isinstance(event[key], str):
            event[key] = scrub(event[key])
    return event


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(format="%(message)s", level=level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=True,
    )
