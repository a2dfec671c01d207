"""Phone numbers: stored as E.164, masked wherever they are logged."""

from __future__ import annotations

import phonenumbers


class InvalidPhone(ValueError):
    """The text is not a phone number we could text."""

    #: What the shared error installer names as the culprit (``shared.errors``).
    field = "phone"


def normalize_phone(raw: str, default_region: str = "US") -> str:
    """E.164 form of ``raw``, which may be national in ``default_region``."""
    try:
        parsed = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone(f"{raw!r} is not a phone number") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhone(f"{raw!r} is not a valid phone number for region {default_region}")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def mask_phone(phone: str | None) -> str:
    """``+1415*****67``: enough to tell numbers apart in a log, not enough to call."""
    if not phone:
        return ""
    if len(phone) <= 6:
        return "*" * len(phone)
    return phone[:4] + "*" * (len(phone) - 6) + phone[-2:]
