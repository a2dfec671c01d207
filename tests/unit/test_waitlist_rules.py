"""The waitlist's pure rules: times of day on the location's clock, and which entry a
freed slot fits."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from services.booking.waitlist.rules import Wish, fits, time_of_day

NY = ZoneInfo("America/New_York")


def ny(hour: int, minute: int = 0, day: int = 9) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=NY).astimezone(UTC)


def test_times_of_day_are_read_on_the_locations_clock() -> None:
    assert time_of_day(ny(11, 59), NY) == "morning"
    assert time_of_day(ny(12, 0), NY) == "afternoon"
    assert time_of_day(ny(16, 59), NY) == "afternoon"
    assert time_of_day(ny(17, 0), NY) == "evening"
    # 15:30 UTC is 11:30 in New York on 9 March (daylight time): still morning there.
    assert time_of_day(datetime(2026, 3, 9, 15, 30, tzinfo=UTC), NY) == "morning"


def test_a_slot_fits_the_window_therapist_and_times_of_day_asked_for() -> None:
    wish = Wish(None, date(2026, 3, 9), date(2026, 3, 10), ("evening",))
    assert fits(wish, start=ny(18), therapist_id="t1", tz=NY)
    assert not fits(wish, start=ny(10), therapist_id="t1", tz=NY)
    assert not fits(wish, start=ny(18, day=11), therapist_id="t1", tz=NY)
    # 23:30 in New York on the 10th is the 11th in UTC: the local date counts.
    assert fits(wish, start=ny(23, 30, day=10), therapist_id="t1", tz=NY)
    named = Wish("t2", date(2026, 3, 9), date(2026, 3, 9), ())
    assert fits(named, start=ny(9), therapist_id="t2", tz=NY)
    assert not fits(named, start=ny(9), therapist_id="t1", tz=NY)
