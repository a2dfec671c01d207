"""Pure waitlist rules: what a time of day is, which entry a freed slot fits, the states.

Times of day are read on the location's wall clock at the slot's start: ``morning``
before 12:00, ``afternoon`` from 12:00 to before 17:00, ``evening`` from 17:00 on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Literal
from zoneinfo import ZoneInfo

TimeOfDay = Literal["morning", "afternoon", "evening"]
TIMES_OF_DAY: tuple[TimeOfDay, ...] = ("morning", "afternoon", "evening")
NOON = time(12, 0)
EVENING = time(17, 0)

#: At most this many offers of one slot are open at once.
OFFERS_PER_SLOT = 3

# Entry states.
WAITING = "waiting"
FILLED = "filled"
REMOVED = "removed"

# Slot states: open (offered), filled (a claim booked it), closed (gone: booked by someone
# else, too close to its start, or nobody left to offer it to).
OPEN = "open"
CLOSED = "closed"

# Offer states (OPEN and FILLED as above).
TAKEN = "taken"
EXPIRED = "expired"


def time_of_day(start: datetime, tz: ZoneInfo) -> TimeOfDay:
    """The part of the day ``start`` falls in, on the wall clock of ``tz``."""
    local = start.astimezone(tz).time()
    if local < NOON:
        return "morning"
    if local < EVENING:
        return "afternoon"
    return "evening"


@dataclass(frozen=True)
class Wish:
    """What an entry waits for, beyond treatment and location (matched in SQL)."""

    therapist_id: str | None
    earliest: date
    latest: date
    times_of_day: tuple[str, ...]


def fits(wish: Wish, *, start: datetime, therapist_id: str, tz: ZoneInfo) -> bool:
    """Whether a freed slot starting at ``start`` with ``therapist_id`` is what ``wish`` asks:
    the therapist if one is named, the local date inside the window, the time of day if any."""
    if wish.therapist_id is not None and wish.therapist_id != therapist_id:
        return False
    if not wish.earliest <= start.astimezone(tz).date() <= wish.latest:
        return False
    return not wish.times_of_day or time_of_day(start, tz) in wish.times_of_day
