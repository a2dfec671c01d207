"""Structured logs (structlog) that never carry a phone number whole, a secret or a body."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

from shared.phones import mask_phone

_PHONE_KEYS = {"phone", "to", "from_", "from"}
_SECRET_KEYS = {"password", "token", "api_key", "authorization", "secret", "body", "auth_token"}


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask phones and drop secrets and message bodies before anything is written."""
    for key in list(event):
        lowered = key.lower()
        if lowered in _PHONE_KEYS and isinstance(event[key], str):
            event[key] = mask_phone(event[key])
        elif lowered in _SECRET_KEYS:
            event[key] = "[redacted]"
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
