"""Names refuse control characters and URLs with 422 naming the field; ICS feeds escape
whatever text they carry, so a stored line feed cannot break them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import icalendar
import pytest
from pydantic import BaseModel, ValidationError

from services.booking.calendar import ical
from services.booking.schemas import (
    ClientIn,
    ClientPatch,
    LocationIn,
    RoomIn,
    TherapistIn,
    TreatmentIn,
)
from services.referrals.schemas import PartnerIn
from shared.validation import one_line, plain_name
from tests.unit.test_calendar_ics import a_session

HOSTILE = [
    "Ana\nSTOP",
    "Ana\r\nBEGIN:VEVENT",
    "Ana\tB",
    "Ana\x00",
    "Ana\x1b[31m",
    "Ana\u2028B",
    "Ana\u202eevil",
    "Ana http://evil.example",
    "Ana https://evil.example",
    "see www.evil.example",
    "HTTPS://EVIL.EXAMPLE",
]

CASES: list[tuple[type[BaseModel], dict[str, Any], str]] = [
    (LocationIn, {"timezone": "UTC", "address": "1 Main St", "phone": "+12125550100"}, "name"),
    (RoomIn, {}, "name"),
    (TreatmentIn, {"modality": "medical_massage", "duration_minutes": 60}, "name"),
    (TherapistIn, {"modalities": ["medical_massage"]}, "name"),
    (ClientIn, {"last_name": "Lopez", "phone": "+12125550199"}, "first_name"),
    (ClientIn, {"first_name": "Maria", "phone": "+12125550199"}, "last_name"),
    (ClientPatch, {}, "first_name"),
    (ClientPatch, {}, "last_name"),
    (PartnerIn, {"discipline": "acupuncture", "phone": "+12125550100", "email": "a@b.co"}, "name"),
]


@pytest.mark.parametrize(("model", "rest", "field"), CASES)
@pytest.mark.parametrize("value", HOSTILE)
def test_names_refuse_control_characters_and_urls(
    model: type[BaseModel], rest: dict[str, Any], field: str, value: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        model(**rest, **{field: value})
    assert [e["loc"] for e in refused.value.errors()] == [(field,)]
    assert model(**rest, **{field: "  José O'Neil-Smith  "}).model_dump()[field] == (
        "José O'Neil-Smith"
    )


def test_plain_names_pass() -> None:
    for name in ("Maria", "Dr. Ana Pérez", "Room 2 (upstairs)", "Massage: 60 min", "李小龙"):
        assert plain_name(name) == name


def test_a_feed_escapes_text_even_when_a_stored_name_has_line_breaks() -> None:
    session = a_session()
    session.location.name = "River\nside;\r\nBEGIN:VEVENT"
    session.treatment.name = "Drain\x00age"
    feed = ical.feed("Loc\nation, A", [session], {"r": "Room\n2"}, datetime(2026, 3, 1, tzinfo=UTC))
    assert feed.count(b"\r\nBEGIN:VEVENT") == 1  # no content line of our text begins one
    cal = icalendar.Calendar.from_ical(feed)
    [event] = cal.walk("VEVENT")
    assert str(event["LOCATION"]) == "Room 2, River side; BEGIN:VEVENT"
    assert str(event["SUMMARY"]) == "Drain age: Maria L."
    assert b"\r\nX-WR-CALNAME:Loc ation\\, A\r\n" in feed
    assert one_line("a\r\n\tb") == "a b"
