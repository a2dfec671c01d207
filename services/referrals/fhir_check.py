"""FHIR validation of what we build, once per shape instead of once per resource.

``fhir.resources`` validates a webhook Bundle in ~2 ms of CPU (pydantic models built for
every element), which was a tenth of the service's main thread per referral under load.
The Bundles are built by our own code (``fhir.bundle``): their structure changes only
with which optional parts a referral has, and what varies inside are values. FHIR
decides a primitive's validity from its lexical form alone (``fhir_core.types``: regexes
for string, code, id, uri…, date and time patterns, then pydantic's date parsing), so two
Bundles with the same *shape* are valid or invalid together. The shape is every key,
every list's length, every value's type, and for each string the set of lexical classes
it belongs to: each lexical test ``fhir_core`` puts a string through, applied as it
applies it (``_fhir_checks``), whether it parses as a date or a date-time, its length
class (empty, longer than an id may be, over 1 MiB), and whether it holds whitespace other than
space, tab, CR and LF (where Python's and pydantic's regex engines could disagree on
``\\s``). Integers are classed by sign and width; anything else by its value.

A shape seen for the first time is validated with ``fhir.resources`` (and refused as
before if invalid); a shape already validated is accepted. Failures are not remembered:
each is validated (and refused) again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

#: Shapes remembered per kind before the memory starts over (a handful exist in practice).
MAX_SHAPES = 512
#: Strings whose class is remembered: those seen in two Bundles (the constant parts every
#: Bundle repeats), and the last few seen in one. A client's name, phone or birth date
#: is in the Bundles of that client's referrals only, so it stays among those few, not
#: for the process's life.
MAX_STRINGS = 4096
MAX_FRESH = 256

_ODD_SPACE = re.compile(r"[^\S \t\r\n]")


Check = Callable[[str], object]


def _fhir_checks() -> tuple[Check, ...]:
    """The lexical tests ``fhir_core.types`` puts strings through, each as it applies it
    (pydantic's ``pattern``: a search; dates and times: a full match; ``url``: pydantic's
    URL, else a path with a resource type)."""
    from fhir_core import constraints, types
    from pydantic import AnyUrl, TypeAdapter

    def search(pattern: str | re.Pattern[str]) -> Check:
        return re.compile(pattern).search

    def full(pattern: re.Pattern[str]) -> Check:
        return pattern.fullmatch

    any_url = TypeAdapter(AnyUrl)
    path = types.Url.path_pattern
    resource_type = re.compile(r"^[A-Za-z0-9\-.#]+$")

    def url(text: str) -> bool:
        if "://" in text and _parses(any_url.validate_python, text):
            return True
        matched = path.match(text if text.startswith("/") else "/" + text)
        return bool(matched and resource_type.match(matched.groupdict().get("resourceType", "")))

    id_pattern = getattr(constraints, "TYPES_ID_PATTERN", None) or types.Id.pattern
    id_length = getattr(constraints, "TYPES_ID_MAX_LENGTH", None) or 1024 * 1024
    return (
        search(r"[ \r\n\t\S]+"),  # string
        search(r"^[^\s]+(\s[^\s]+)*$"),  # code
        search(id_pattern),  # id
        lambda text: len(text) <= id_length,  # id
        search(types.Oid.pattern),
        search(types.Markdown.pattern),
        search(types.Base64Binary.regex),
        full(types.Date.pattern),
        full(types.DateTime.pattern),
        full(types.Instant.pattern),
        full(types.Time.pattern),
        full(types.FHIR_LEAP_SECOND),
        full(types.Decimal.pattern),  # a number given as a string (pydantic's lax mode)
        url,
        lambda text: _parses(date.fromisoformat, text),
        lambda text: _parses(datetime.fromisoformat, text),
    )


class ShapeValidator:
    """Validates with ``validate`` the first resource of every shape (see the module)."""

    def __init__(self, validate: Callable[[dict[str, Any]], object]) -> None:
        self._validate = validate
        self._checks: tuple[Check, ...] | None = None
        self._shapes: set[Any] = set()
        self._strings: dict[str, tuple[Any, ...]] = {}
        #: string -> (its class, the Bundle it was first seen in)
        self._fresh: dict[str, tuple[tuple[Any, ...], int]] = {}
        self._checked = 0
        self.validated = 0

    def check(self, resource: dict[str, Any]) -> None:
        """Raise what ``validate`` raises for an invalid resource."""
        self._checked += 1
        shape = self._shape(resource)
        if shape in self._shapes:
            return
        self._validate(resource)
        self.validated += 1
        if len(self._shapes) >= MAX_SHAPES:
            self._shapes.clear()
        self._shapes.add(shape)

    def _shape(self, value: Any) -> Any:
        # The hot part (a Bundle has ~100 values): plain loops, strings first.
        kind = type(value)
        if kind is str:
            known = self._strings.get(value)
            return known if known is not None else self._string_class(value)
        if kind is dict:
            shape = self._shape
            return tuple([(k, shape(v)) for k, v in value.items()])
        if kind is list:
            shape = self._shape
            return ("[", *[shape(v) for v in value])
        if kind is bool or value is None:
            return value
        if kind is int:
            # positiveInt, unsignedInt, integer (32 bits), integer64
            return (int, (value > 0) - (value < 0), abs(value) < 2**31, abs(value) < 2**63)
        return (kind, value)  # floats and the rest: by value, as they are rare

    def _string_class(self, text: str) -> tuple[Any, ...]:
        known = self._strings.get(text)
        if known is not None:
            return known
        fresh = self._fresh.get(text)
        if fresh is not None:
            known, first_in = fresh
            if first_in != self._checked:  # a second Bundle: a string every Bundle repeats
                del self._fresh[text]
                if len(self._strings) >= MAX_STRINGS:
                    self._strings.clear()
                self._strings[text] = known
            return known
        if self._checks is None:
            self._checks = _fhir_checks()
        flags: list[Any] = [str, len(text) == 0, len(text) > 1024 * 1024]
        flags.append(bool(_ODD_SPACE.search(text)))
        flags.extend(bool(check(text)) for check in self._checks)
        known = tuple(flags)
        if len(self._fresh) >= MAX_FRESH:
            self._fresh.clear()
        self._fresh[text] = (known, self._checked)
        return known


def _parses(parse: Callable[[str], object], text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True
