"""Availability and the session state machine, with no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.booking import domain, free_time
from services.booking.domain import (
    BookingPolicy,
    Interval,
    RoomCalendar,
    TherapistCalendar,
    Treatment,
    WeeklyHours,
)

NY = ZoneInfo("America/New_York")
LA = ZoneInfo("America/Los_Angeles")
MASSAGE_60 = Treatment("t60", "medical_massage", 60, buffer_minutes=15)
NO_NOTICE = BookingPolicy(min_notice=timedelta(0), horizon=timedelta(days=3650))
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY).astimezone(UTC)


def therapist(
    tid: str = "ana",
    *,
    hours: list[WeeklyHours] | None = None,
    busy: list[Interval] | None = None,
    modalities: frozenset[str] = frozenset({"medical_massage"}),
) -> TherapistCalendar:
    every_day = [WeeklyHours("downtown", d, time(9), time(17)) for d in range(7)]
    return TherapistCalendar(tid, modalities, hours if hours is not None else every_day, busy or [])


def slots_on(
    day_start: datetime,
    day_end: datetime,
    therapists: list[TherapistCalendar],
    rooms: list[RoomCalendar] | None = None,
    treatment: Treatment = MASSAGE_60,
) -> list[domain.Slot]:
    return free_time.available_slots(
        treatment,
        "downtown",
        NY,
        Interval(day_start, day_end),
        therapists,
        rooms if rooms is not None else [RoomCalendar("room-1")],
        now=LONG_AGO,
        policy=NO_NOTICE,
    )


def test_a_working_day_offers_every_quarter_hour_that_fits_the_treatment() -> None:
    slots = slots_on(ny(2026, 11, 30, 0, 0), ny(2026, 12, 1, 0, 0), [therapist()])
    starts = [s.start.astimezone(NY).strftime("%H:%M") for s in slots]
    assert starts[0] == "09:00"
    assert starts[-1] == "16:00"  # a 60-minute session must end by 17:00
    assert len(starts) == 29


def test_working_hours_stay_on_the_wall_clock_across_the_spring_dst_change() -> None:
    # 2026-03-08: New York jumps from 02:00 EST to 03:00 EDT.
    before = slots_on(ny(2026, 3, 7, 0, 0), ny(2026, 3, 8, 0, 0), [therapist()])
    after = slots_on(ny(2026, 3, 9, 0, 0), ny(2026, 3, 10, 0, 0), [therapist()])
    assert before[0].start == utc(2026, 3, 7, 14, 0)  # 09:00 EST = 14:00 UTC
    assert after[0].start == utc(2026, 3, 9, 13, 0)  # 09:00 EDT = 13:00 UTC
    assert before[0].start.astimezone(NY).hour == after[0].start.astimezone(NY).hour == 9


def test_the_autumn_dst_change_neither_loses_nor_doubles_a_slot() -> None:
    night = [
        WeeklyHours("downtown", 6, time(0, 0), time(4, 0))
    ]  # Sunday 2026-11-01, 01:00 happens twice
    slots = slots_on(ny(2026, 11, 1, 0, 0), ny(2026, 11, 1, 6, 0), [therapist(hours=night)])
    # 00:00 to 04:00 wall clock is five real hours that night: starts every 15 minutes until 03:00 local.
    assert len({s.start for s in slots}) == len(slots)
    assert slots[-1].end <= ny(2026, 11, 1, 4, 0)
    assert (slots[-1].start - slots[0].start) == timedelta(hours=4)


def test_the_buffer_keeps_the_next_start_clear_for_room_turnover() -> None:
    booked = Interval(ny(2026, 11, 30, 10, 0), ny(2026, 11, 30, 11, 15))  # 60 min + 15 buffer
    slots = slots_on(ny(2026, 11, 30, 9, 0), ny(2026, 11, 30, 13, 0), [therapist(busy=[booked])])
    starts = {s.start.astimezone(NY).strftime("%H:%M") for s in slots}
    assert "09:00" not in starts  # 09:00-10:00 plus 15 min buffer runs into 10:00
    assert "08:45" not in starts
    assert "11:00" not in starts
    assert "11:15" in starts


def test_a_therapist_booked_at_another_location_is_not_offered_here() -> None:
    # Ana works at downtown on Mondays, but a session at uptown (from another calendar) holds her.
    elsewhere = Interval(ny(2026, 11, 30, 13, 0), ny(2026, 11, 30, 14, 15))
    ana = therapist("ana", busy=[elsewhere])
    slots = slots_on(ny(2026, 11, 30, 11, 0), ny(2026, 11, 30, 17, 0), [ana])
    assert all(
        not Interval(s.start, s.start + MASSAGE_60.occupied).overlaps(elsewhere) for s in slots
    )
    starts = {s.start for s in slots}
    assert ny(2026, 11, 30, 11, 45) in starts  # ends 12:45, buffer until 13:00
    assert ny(2026, 11, 30, 12, 0) not in starts
    assert ny(2026, 11, 30, 14, 15) in starts


def test_time_off_removes_the_day_and_another_therapist_covers_it() -> None:
    off = Interval(ny(2026, 11, 30, 0, 0), ny(2026, 12, 1, 0, 0))
    slots = slots_on(ny(2026, 11, 30, 0, 0), ny(2026, 12, 1, 0, 0), [therapist("ana", busy=[off])])
    assert slots == []
    covered = slots_on(
        ny(2026, 11, 30, 0, 0),
        ny(2026, 12, 1, 0, 0),
        [therapist("ana", busy=[off]), therapist("ben")],
    )
    assert covered and {s.therapist_id for s in covered} == {"ben"}


def test_no_free_room_means_no_slot_even_with_a_free_therapist() -> None:
    room_busy = RoomCalendar("room-1", [Interval(ny(2026, 11, 30, 9, 0), ny(2026, 11, 30, 17, 0))])
    assert (
        slots_on(ny(2026, 11, 30, 0, 0), ny(2026, 12, 1, 0, 0), [therapist()], rooms=[room_busy])
        == []
    )


def test_an_unqualified_therapist_is_never_offered() -> None:
    lymph = therapist("lee", modalities=frozenset({"lymphatic_drainage"}))
    assert slots_on(ny(2026, 11, 30, 0, 0), ny(2026, 12, 1, 0, 0), [lymph]) == []


def test_the_least_booked_therapist_that_day_is_proposed() -> None:
    day = ny(2026, 11, 30, 0, 0).astimezone(NY).date()
    busy_ana = therapist("ana")
    busy_ana.load_by_day = {day: 3}
    slots = slots_on(ny(2026, 11, 30, 9, 0), ny(2026, 11, 30, 10, 0), [busy_ana, therapist("zoe")])
    assert slots[0].therapist_id == "zoe"


def test_minimum_notice_and_horizon_limit_what_is_offered() -> None:
    now = ny(2026, 11, 30, 9, 0)
    policy = BookingPolicy(min_notice=timedelta(hours=2), horizon=timedelta(days=1))
    slots = free_time.available_slots(
        MASSAGE_60,
        "downtown",
        NY,
        Interval(ny(2026, 11, 30, 0, 0), ny(2026, 12, 10, 0, 0)),
        [therapist()],
        [RoomCalendar("room-1")],
        now=now,
        policy=policy,
    )
    assert slots[0].start == ny(2026, 11, 30, 11, 0)
    assert max(s.start for s in slots) <= now + timedelta(days=1)
    with pytest.raises(domain.TooSoon):
        domain.check_booking_window(ny(2026, 11, 30, 10, 0), now, policy)
    with pytest.raises(domain.TooFar):
        domain.check_booking_window(ny(2026, 12, 5, 10, 0), now, policy)


def test_choose_for_booking_names_the_reason_it_cannot_book() -> None:
    start = ny(2026, 11, 30, 10, 0)
    with pytest.raises(domain.OutsideWorkingHours):
        domain.choose_for_booking(
            MASSAGE_60, "downtown", NY, ny(2026, 11, 30, 18, 0), [therapist()], [RoomCalendar("r")]
        )
    taken = therapist(busy=[Interval(start, start + timedelta(minutes=75))])
    with pytest.raises(domain.SlotTaken):
        domain.choose_for_booking(MASSAGE_60, "downtown", NY, start, [taken], [RoomCalendar("r")])
    room_taken = RoomCalendar(
        "r", [Interval(start - timedelta(minutes=30), start + timedelta(minutes=10))]
    )
    with pytest.raises(domain.NoRoomFree):
        domain.choose_for_booking(MASSAGE_60, "downtown", NY, start, [therapist()], [room_taken])
    assert domain.choose_for_booking(
        MASSAGE_60, "downtown", NY, start, [therapist()], [RoomCalendar("r")]
    ) == ("ana", "r")


@pytest.mark.parametrize(
    ("status", "action", "expected"),
    [
        ("booked", "confirm", "confirmed"),
        ("booked", "check_in", "checked_in"),
        ("confirmed", "check_in", "checked_in"),
        ("checked_in", "complete", "completed"),
        ("booked", "cancel", "cancelled"),
        ("confirmed", "reschedule", "booked"),
        ("booked", "no_show", "no_show"),
    ],
)
def test_allowed_transitions(status: str, action: str, expected: str) -> None:
    assert domain.next_status(status, action) == expected


@pytest.mark.parametrize(
    ("status", "action"),
    [
        ("cancelled", "check_in"),
        ("completed", "cancel"),
        ("booked", "complete"),
        ("no_show", "reschedule"),
        ("checked_in", "no_show"),
        ("cancelled", "cancel"),
    ],
)
def test_illegal_transitions_are_refused_with_the_reason(status: str, action: str) -> None:
    with pytest.raises(domain.IllegalTransition, match=status.replace("_", " ")):
        domain.next_status(status, action)


def test_a_cancel_inside_the_window_is_late() -> None:
    start = utc(2026, 11, 30, 15, 0)
    assert domain.is_late_cancel(start, start - timedelta(hours=3), timedelta(hours=24))
    assert not domain.is_late_cancel(start, start - timedelta(hours=30), timedelta(hours=24))
