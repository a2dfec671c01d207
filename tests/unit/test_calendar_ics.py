"""The calendar sync's pure rules: what we write, what counts as busy, what drifted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import icalendar
import pytest

from services.booking import db, domain
from services.booking.calendar import ical
from services.booking.calendar.context import SyncTimings, link_status
from services.booking.calendar.ical import EventState, FoundEvent, busy_spans, plan_repairs

NY = ZoneInfo("America/New_York")
CHICAGO = ZoneInfo("America/Chicago")
WINDOW = domain.Interval(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 31, tzinfo=UTC))


def ics(*vevents: str, extra: str = "") -> bytes:
    body = "".join(
        f"BEGIN:VEVENT\nDTSTAMP:20260101T000000Z\n{v.strip()}\nEND:VEVENT\n" for v in vevents
    )
    return f"BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//t//EN\n{extra}{body}END:VCALENDAR\n".encode()


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY).astimezone(UTC)


def spans(
    text: bytes, tz: ZoneInfo = NY, window: domain.Interval = WINDOW
) -> list[tuple[datetime, datetime, str]]:
    return [(s.start, s.end, s.uid) for s in busy_spans([text], window, tz)]


def test_a_timed_event_is_busy_in_utc() -> None:
    text = ics(
        "UID:a\nDTSTART;TZID=America/New_York:20260310T100000\nDTEND;TZID=America/New_York:20260310T113000"
    )
    assert spans(text) == [(ny(2026, 3, 10, 10), ny(2026, 3, 10, 11, 30), "a")]


def test_an_all_day_event_blocks_the_whole_local_day_even_across_dst() -> None:
    # 8 March 2026 is the spring-forward day in New York: 23 hours long.
    text = ics("UID:d\nDTSTART;VALUE=DATE:20260308\nDTEND;VALUE=DATE:20260309")
    [(start, end, _uid)] = spans(text)
    assert start == ny(2026, 3, 8, 0) and end == ny(2026, 3, 9, 0)
    assert end - start == timedelta(hours=23)
    # the same event read for a therapist whose link is in Chicago
    [(start, _end, _uid)] = spans(text, tz=CHICAGO)
    assert start == datetime(2026, 3, 8, tzinfo=CHICAGO).astimezone(UTC)


def test_an_all_day_event_without_dtend_lasts_one_day_and_floating_times_are_local() -> None:
    text = ics(
        "UID:d\nDTSTART;VALUE=DATE:20260312",
        "UID:f\nDTSTART:20260313T090000\nDURATION:PT2H",
    )
    assert spans(text) == [
        (ny(2026, 3, 12, 0), ny(2026, 3, 13, 0), "d"),
        (ny(2026, 3, 13, 9), ny(2026, 3, 13, 11), "f"),
    ]


def test_recurring_events_are_expanded_with_exceptions_and_moved_instances() -> None:
    text = ics(
        "UID:r\nDTSTART;TZID=America/New_York:20260302T120000\n"
        "DTEND;TZID=America/New_York:20260302T130000\nRRULE:FREQ=DAILY;COUNT=4\n"
        "EXDATE;TZID=America/New_York:20260303T120000",
        "UID:r\nRECURRENCE-ID;TZID=America/New_York:20260304T120000\n"
        "DTSTART;TZID=America/New_York:20260304T150000\nDTEND;TZID=America/New_York:20260304T160000",
        "UID:r\nRECURRENCE-ID;TZID=America/New_York:20260305T120000\nSTATUS:CANCELLED\n"
        "DTSTART;TZID=America/New_York:20260305T120000\nDTEND;TZID=America/New_York:20260305T130000",
    )
    assert [(s, e) for s, e, _ in spans(text)] == [
        (ny(2026, 3, 2, 12), ny(2026, 3, 2, 13)),
        (ny(2026, 3, 4, 15), ny(2026, 3, 4, 16)),
    ]


def test_a_series_that_started_before_the_window_still_counts_inside_it() -> None:
    text = ics(
        "UID:w\nDTSTART;TZID=America/New_York:20250106T080000\n"
        "DTEND;TZID=America/New_York:20250106T090000\nRRULE:FREQ=WEEKLY;BYDAY=MO"
    )
    starts = [s for s, _e, _u in spans(text)]
    assert starts[0] == ny(2026, 3, 2, 8) and len(starts) == 5  # the Mondays of March 2026


def test_cancelled_transparent_free_and_our_own_events_do_not_block() -> None:
    slot = "DTSTART:20260310T150000Z\nDTEND:20260310T160000Z"
    text = ics(
        f"UID:c\nSTATUS:CANCELLED\n{slot}",
        f"UID:t\nTRANSP:TRANSPARENT\n{slot}",
        f"UID:m\nX-MICROSOFT-CDO-BUSYSTATUS:FREE\n{slot}",
        f"UID:6f1c@booking.clinic-backbone\n{slot}",
        f"UID:timeoff-1@booking.clinic-backbone\n{slot}",
        f"UID:busy\nTRANSP:OPAQUE\n{slot}",
    )
    assert [u for _s, _e, u in spans(text)] == ["busy"]


def test_events_outside_the_window_and_empty_ones_are_left_out() -> None:
    text = ics(
        "UID:before\nDTSTART:20260201T100000Z\nDTEND:20260201T110000Z",
        "UID:after\nDTSTART:20260415T100000Z\nDTEND:20260415T110000Z",
        "UID:zero\nDTSTART:20260310T100000Z",
        "UID:edge\nDTSTART:20260228T230000Z\nDTEND:20260301T010000Z",
    )
    assert [u for _s, _e, u in spans(text)] == ["edge"]


def test_x_wr_timezone_keeps_a_utc_series_at_its_local_time_across_dst() -> None:
    # Google exports times in UTC plus X-WR-TIMEZONE: the meeting is at 10:00 in New York,
    # so after the switch to summer time (8 March) it starts at 14:00 UTC, not 15:00.
    text = ics(
        "UID:g\nDTSTART:20260302T150000Z\nDTEND:20260302T160000Z\nRRULE:FREQ=WEEKLY;COUNT=2",
        extra="X-WR-TIMEZONE:America/New_York\n",
    )
    assert [s for s, _e, _u in spans(text)] == [ny(2026, 3, 2, 10), ny(2026, 3, 9, 10)]


def test_text_that_is_not_icalendar_is_refused() -> None:
    with pytest.raises(ValueError, match="not an iCalendar"):
        busy_spans([b"<html>login page</html>"], WINDOW, NY)


# -- what we write ------------------------------------------------------------------------


def a_session(status: str = domain.BOOKED, version: int = 3) -> db.Session:
    location = db.Location(id="loc", name="Riverside", timezone="America/New_York")
    client = db.Client(id="c", first_name="Maria", last_name="Lopez")
    treatment = db.Treatment(id="t", name="Lymphatic drainage", duration_minutes=60)
    therapist = db.Therapist(id="th", name="Ana")
    return db.Session(
        id="s-1",
        start_at=ny(2026, 3, 9, 10),
        end_at=ny(2026, 3, 9, 11),
        status=status,
        version=version,
        room_id="r",
        location=location,
        client=client,
        treatment=treatment,
        therapist=therapist,
        updated_at=datetime(2026, 3, 1, tzinfo=UTC),
    )


def test_a_session_resource_carries_uid_sequence_tzid_and_minimal_data() -> None:
    text = ical.session_resource(a_session(), "Room 2", datetime(2026, 3, 1, tzinfo=UTC))
    cal = icalendar.Calendar.from_ical(text)
    [event] = cal.walk("VEVENT")
    assert str(event["UID"]) == "s-1@booking.clinic-backbone"
    assert int(event["SEQUENCE"]) == 2
    assert event["DTSTART"].params["TZID"] == "America/New_York"
    assert event["DTSTART"].dt == datetime(2026, 3, 9, 10, tzinfo=NY)
    assert str(event["SUMMARY"]) == "Lymphatic drainage: Maria L."
    assert str(event["LOCATION"]) == "Room 2, Riverside"
    assert "Lopez" not in text.decode()
    assert [tz["TZID"] for tz in cal.walk("VTIMEZONE")] == ["America/New_York"]
    cancelled = ical.session_resource(
        a_session(domain.CANCELLED, 4), "Room 2", datetime(2026, 3, 1, tzinfo=UTC)
    )
    assert b"STATUS:CANCELLED" in cancelled and b"SEQUENCE:3" in cancelled


def test_session_ids_come_back_from_our_uids_only() -> None:
    assert ical.session_id_of("abc@booking.clinic-backbone") == "abc"
    assert ical.session_id_of("timeoff-1@booking.clinic-backbone") is None
    assert ical.session_id_of("abc@google.com") is None


# -- reconcile ----------------------------------------------------------------------------


def state(sid: str, sequence: int = 0, status: str = "CONFIRMED", hour: int = 10) -> EventState:
    return EventState(
        f"{sid}@booking.clinic-backbone",
        sequence,
        ny(2026, 3, 9, hour),
        ny(2026, 3, 9, hour + 1),
        status,
    )


def test_plan_repairs_rewrites_missing_and_changed_events_and_removes_stale_ones() -> None:
    expected = {
        "a": state("a"),
        "b": state("b", 1),
        "c": state("c", 2, "CANCELLED"),
        "d": state("d"),
    }
    found = [
        FoundEvent("/cal/a.ics", state("a")),  # as it should be
        FoundEvent("/cal/b.ics", state("b", 1, hour=14)),  # moved by hand
        FoundEvent("/cal/c.ics", state("c", 1)),  # an older version
        # d: deleted by hand
        FoundEvent("/cal/x.ics", state("x")),  # no such session here
        FoundEvent("/cal/a-copy.ics", state("a")),  # the same UID twice
    ]
    repairs = plan_repairs(expected, found)
    assert repairs.rewrite == ["b", "c", "d"]
    assert [e.href for e in repairs.remove] == ["/cal/a-copy.ics", "/cal/x.ics"]


def test_our_events_reads_only_our_session_events() -> None:
    text = ics(
        "UID:s-9@booking.clinic-backbone\nSEQUENCE:4\nSTATUS:CANCELLED\n"
        "DTSTART;TZID=America/New_York:20260309T100000\nDTEND;TZID=America/New_York:20260309T110000",
        "UID:someone-else\nDTSTART:20260309T100000Z\nDTEND:20260309T110000Z",
    )
    [found] = ical.our_events([("/cal/s-9.ics", text), ("/cal/bad.ics", b"garbage")])
    assert found.href == "/cal/s-9.ics"
    assert found.state == EventState(
        "s-9@booking.clinic-backbone", 4, ny(2026, 3, 9, 10), ny(2026, 3, 9, 11), "CANCELLED"
    )


# -- retries and status -------------------------------------------------------------------


def test_backoff_doubles_and_is_capped() -> None:
    timings = SyncTimings(retry_base_seconds=2, retry_max_seconds=30)
    assert [timings.backoff(n).total_seconds() for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]


def test_a_link_is_reported_failing_after_the_threshold() -> None:
    link = db.CalendarLink(consecutive_failures=0, last_synced_at=None)
    assert link_status(link, 3) == "pending"
    link.last_synced_at = datetime(2026, 3, 1, tzinfo=UTC)
    assert link_status(link, 3) == "ok"
    link.consecutive_failures = 2
    assert link_status(link, 3) == "retrying"
    link.consecutive_failures = 3
    assert link_status(link, 3) == "failing"
