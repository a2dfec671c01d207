"""Working hours as versions (no I/O): each local date follows its own week, DST included."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from services.booking import domain
from services.booking.hours import bounded, version_on

NY = ZoneInfo("America/New_York")


def week(since: date, opens: int, closes: int) -> list[domain.WeeklyHours]:
    return [
        domain.WeeklyHours("loc", d, time(opens), time(closes), valid_from=since) for d in range(7)
    ]


def test_each_row_ends_where_the_next_version_starts() -> None:
    first, second = date(1970, 1, 1), date(2027, 3, 12)
    rows = bounded(week(first, 9, 17) + week(second, 10, 14), [first, second])
    assert {r.valid_until for r in rows if r.valid_from == first} == {second}
    assert {r.valid_until for r in rows if r.valid_from == second} == {None}
    assert version_on([first, second], date(2027, 3, 11)) == first
    assert version_on([first, second], second) == second
    assert version_on([second], first) is None


def test_spans_follow_each_dates_version_across_the_spring_forward() -> None:
    # New York springs forward on Sunday 2027-03-14; the new week starts on Friday the 12th.
    first, second = date(1970, 1, 1), date(2027, 3, 12)
    rows = bounded(week(first, 9, 17) + week(second, 10, 14), [first, second])
    window = domain.Interval(
        datetime(2027, 3, 11, tzinfo=UTC), datetime(2027, 3, 16, 12, tzinfo=UTC)
    )
    spans = domain.working_spans(rows, "loc", NY, window)
    local = [
        (s.start.astimezone(NY).strftime("%m-%d %H:%M"), s.end.astimezone(NY).strftime("%H:%M"))
        for s in spans
    ]
    assert local[:2] == [("03-11 09:00", "17:00"), ("03-12 10:00", "14:00")]
    assert ("03-14 10:00", "14:00") in local and ("03-15 10:00", "14:00") in local
    sunday = next(s for s in spans if s.start.astimezone(NY).day == 14)
    assert sunday.start == datetime(2027, 3, 14, 14, tzinfo=UTC)  # 10:00 EDT
    thursday = spans[0]
    assert thursday.start == datetime(2027, 3, 11, 14, tzinfo=UTC)  # 09:00 EST
