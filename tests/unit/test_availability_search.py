"""Availability against the booking check: a start is offered exactly when a booking there
would succeed, with the therapist and room the booking would get (``choose_for_booking``).

Random calendars (busy spans at odd minutes and seconds, touching, overlapping and empty spans,
time off across days, closures, hours at two locations, a DST change), every quarter hour
of the window checked.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import TypeAdapter

from services.booking import domain, free_time
from services.booking.domain import (
    BookingPolicy,
    Interval,
    RoomCalendar,
    TherapistCalendar,
    Treatment,
    WeeklyHours,
)

LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def random_calendar(
    rng: random.Random, day0: datetime, tz: ZoneInfo
) -> tuple[list[TherapistCalendar], list[RoomCalendar]]:
    def span() -> Interval:
        start = day0 + timedelta(
            minutes=rng.randrange(0, 4 * 24 * 60), seconds=rng.choice([0, 0, 0, 30])
        )
        return Interval(start, start + timedelta(minutes=rng.choice([0, rng.randrange(5, 200)])))

    therapists = []
    for n in range(rng.randrange(1, 5)):
        hours = [
            WeeklyHours(
                rng.choice(["downtown", "downtown", "uptown"]),
                weekday,
                time(rng.randrange(6, 12), rng.choice([0, 15, 30, 45, 10])),
                time(rng.randrange(13, 22), rng.choice([0, 30, 50])),
            )
            for weekday in range(7)
            if rng.random() < 0.8
        ]
        busy = [span() for _ in range(rng.randrange(0, 12))]
        if busy and rng.random() < 0.3:  # a span touching another
            busy.append(Interval(busy[0].end, busy[0].end + timedelta(minutes=40)))
        load = {
            (day0 + timedelta(days=d)).astimezone(tz).date(): rng.randrange(0, 3) for d in range(4)
        }
        therapists.append(
            TherapistCalendar(
                f"t{n}", frozenset({"medical_massage"}), hours, busy, load_by_day=load
            )
        )
    rooms = [
        RoomCalendar(f"r{n}", [span() for _ in range(rng.randrange(0, 10))])
        for n in range(rng.randrange(1, 4))
    ]
    return therapists, rooms


def booked_as(
    treatment: Treatment,
    start: datetime,
    tz: ZoneInfo,
    therapists: list[TherapistCalendar],
    rooms: list[RoomCalendar],
) -> tuple[str, str] | None:
    try:
        return domain.choose_for_booking(treatment, "downtown", tz, start, therapists, rooms)
    except (domain.OutsideWorkingHours, domain.SlotTaken, domain.NoRoomFree):
        return None


#: (zone, first day, grid step): New York's autumn change, Kathmandu's +05:45, Lord Howe's
#: half-hour change (2026-04-05), Chicago's spring change on a 20-minute grid.
CASES = [
    ("America/New_York", datetime(2026, 10, 30), 15),
    ("America/New_York", datetime(2026, 10, 20), 15),
    ("Asia/Kathmandu", datetime(2026, 6, 1), 15),
    ("Australia/Lord_Howe", datetime(2026, 4, 3), 30),
    ("America/Chicago", datetime(2026, 3, 6), 20),
]


@pytest.mark.parametrize("seed", range(40))
def test_a_start_is_offered_exactly_when_a_booking_there_would_succeed(seed: int) -> None:
    rng = random.Random(seed)
    zone, first_day, step = CASES[seed % len(CASES)]
    tz = ZoneInfo(zone)
    day0 = first_day.replace(tzinfo=tz).astimezone(UTC)
    treatment = Treatment("t", "medical_massage", rng.choice([30, 45, 60, 90]), rng.choice([0, 15]))
    therapists, rooms = random_calendar(rng, day0, tz)
    window = Interval(
        day0 + timedelta(minutes=rng.randrange(0, 600)),
        day0 + timedelta(days=3, minutes=rng.randrange(0, 600)),
    )
    policy = BookingPolicy(
        min_notice=timedelta(0), horizon=timedelta(days=3650), step=timedelta(minutes=step)
    )
    offered = {
        s.start: (s.therapist_id, s.room_id, s.end)
        for s in free_time.available_slots(
            treatment, "downtown", tz, window, therapists, rooms, now=LONG_AGO, policy=policy
        )
    }
    # Every instant on the location's wall-clock grid (each minute looked at).
    expected = {}
    at = window.start.replace(second=0, microsecond=0)
    while at + treatment.duration <= window.end:
        local = at.astimezone(tz)
        if at >= window.start and (local.hour * 60 + local.minute) % step == 0:
            chosen = booked_as(treatment, at, tz, therapists, rooms)
            if chosen is not None:
                expected[at] = (*chosen, at + treatment.duration)
        at += timedelta(minutes=1)
    assert offered
    assert offered == expected


def test_instants_round_trip_to_the_microsecond() -> None:
    for at in (
        datetime(2026, 11, 30, 14, 0, tzinfo=UTC),
        datetime(2026, 11, 30, 14, 0, 0, 500_001, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ):
        assert free_time.instant(free_time.micros(at)) == at


def test_the_json_answer_is_what_pydantic_writes_for_the_slots() -> None:
    slots_json = TypeAdapter(list[domain.Slot])
    found = [
        (free_time.micros(datetime(2026, 11, 30, 14, 0, tzinfo=UTC)), "t-1", "r-1"),
        (free_time.micros(datetime(2026, 11, 30, 14, 0, 7, 250, tzinfo=UTC)), 't"2', "r-é"),
        (free_time.micros(datetime(1999, 1, 2, 3, 4, 5, tzinfo=UTC)), "t-1", "r-1"),
    ]
    for duration in (timedelta(minutes=60), timedelta(minutes=45, microseconds=1)):
        assert free_time.as_json(found, duration) == slots_json.dump_json(
            free_time.as_slots(found, duration)
        )
    assert free_time.as_json([], timedelta(minutes=60)) == b"[]"
