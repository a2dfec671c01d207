"""Input types that refuse hostile values with a 422 naming the field, never a 500.

Why: ``0001-01-01T00:00:00+01:00`` parses, but converting it to UTC overflows
(``OverflowError`` is no ``ValueError``, so pydantic let it through and the service answered
500); a name with a line feed or a URL goes straight into texts and ICS feeds. The types
here are used in the services' schemas and query parameters.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator

#: Instants outside these years are refused: nothing in a clinic lies there, and every
#: conversion or ``timedelta`` arithmetic on the rest stays far from ``datetime``'s limits.
MIN_YEAR = 1900
MAX_YEAR = 2200


def to_instant(moment: datetime) -> datetime:
    """``moment`` in UTC; ``ValueError`` when it is naive or outside the supported years."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("must carry a timezone offset, e.g. 2026-03-08T10:00:00Z")
    if not MIN_YEAR <= moment.year <= MAX_YEAR:
        raise ValueError(f"must lie between the years {MIN_YEAR} and {MAX_YEAR}")
    return moment.astimezone(UTC)


#: An aware instant within the supported years, converted to UTC.
Instant = Annotated[datetime, AfterValidator(to_instant)]

# Control characters (C0, DEL, C1) and the Unicode line/paragraph separators, and
# bidirectional overrides that can disguise text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_URL = re.compile(r"(?i)(https?:|www\.|://)")


def plain_name(value: str) -> str:
    """``value`` stripped; ``ValueError`` when it holds control characters or a URL."""
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (line breaks, tabs, …)")
    if _URL.search(value):
        raise ValueError("must not contain a URL")
    value = value.strip()
    if not value:
        raise ValueError("must not be blank")
    return value


#: A name of a person, place or thing: one line of text, no URL (lengths set per field).
Name = Annotated[str, AfterValidator(plain_name)]


def one_line(value: str) -> str:
    """``value`` with every control character turned into a space: for text written into
    formats that break on them (ICS content lines), whatever was stored before validation."""
    return " ".join(_CONTROL.sub(" ", value).split())
