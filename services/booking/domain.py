"""Booking rules with no I/O: when a therapist and a room are free, and how a session moves.

Everything here takes and returns aware UTC datetimes; wall-clock rules (working hours,
the slot grid) are evaluated in the location's zone, so a DST change moves nothing. Each
failure is a named exception; its base class (``shared.errors``) says its HTTP status.
"""

from __future__ import annotations

import bisect
import functools
import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo

from shared.errors import Conflict, DomainError


class SlotTaken(Conflict):
    """The therapist or the room is already booked then (409)."""


class OutsideWorkingHours(Conflict):
    """No qualified therapist works at that location then (409)."""


class NoRoomFree(Conflict):
    """Every room at the location is taken then (409)."""


class TherapistUnavailable(Conflict):
    """The therapist asked for is off, booked, or does not do this treatment (409)."""


class TooSoon(DomainError):
    """The start is inside the location's minimum booking notice (422)."""


class TooFar(DomainError):
    """The start is beyond the location's booking horizon (422)."""


class IllegalTransition(Conflict):
    """The session's status does not allow this change (409)."""


class OverlappingHours(DomainError):
    """A therapist's weekly hours put them in two places at once (422)."""


class RoomNameTaken(DomainError):
    """The location already has a room of that name (422)."""


class NotOffered(Conflict):
    """The treatment is retired: nothing new is booked on it (409)."""


class LocationClosed(Conflict):
    """The location is closed at that time (a holiday, repairs): 409."""


class TimezoneInUse(Conflict):
    """A location's timezone cannot change while it has future sessions (409)."""


class StaleVersion(Conflict):
    """The session changed since the caller read it (a form submitted twice): 409."""


class IdempotencyMismatch(DomainError):
    """An Idempotency-Key was reused for a different request (422)."""


# ---------------------------------------------------------------------------------------
# Intervals


@dataclass(frozen=True, order=True)
class Interval:
    """A half-open span of time ``[start, end)``."""

    start: datetime
    end: datetime

    def overlaps(self, other: Interval) -> bool:
        return self.start < other.end and other.start < self.end

    def contains(self, other: Interval) -> bool:
        return self.start <= other.start and other.end <= self.end


def _bounds(iv: Interval) -> tuple[datetime, datetime]:
    return iv.start, iv.end


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, non-overlapping cover of ``intervals`` (touching spans join)."""
    merged: list[Interval] = []
    for iv in sorted(intervals, key=_bounds):
        if merged and iv.start <= merged[-1].end:
            if iv.end > merged[-1].end:
                merged[-1] = Interval(merged[-1].start, iv.end)
        else:
            merged.append(iv)
    return merged


def subtract(
    spans: Sequence[Interval], busy: Sequence[Interval], ends: Sequence[datetime] | None = None
) -> list[Interval]:
    """Parts of ``spans`` not covered by ``busy`` (both sorted, ``busy`` merged); ``ends``
    are the ends of ``busy`` when the caller has them already."""
    free: list[Interval] = []
    if ends is None:
        ends = [b.end for b in busy]
    for span in spans:
        cursor = span.start
        i = bisect.bisect_left(ends, span.start)
        while i < len(busy) and busy[i].start < span.end:
            if busy[i].start > cursor:
                free.append(Interval(cursor, busy[i].start))
            cursor = max(cursor, busy[i].end)
            i += 1
        if cursor < span.end:
            free.append(Interval(cursor, span.end))
    return free


class BusyIndex:
    """Fast "is anything busy in this span?" over merged intervals."""

    def __init__(self, busy: Iterable[Interval]) -> None:
        self._busy = merge(busy)
        self._ends = [b.end for b in self._busy]

    def is_free(self, span: Interval) -> bool:
        i = bisect.bisect_right(self._ends, span.start)
        return i >= len(self._busy) or self._busy[i].start >= span.end


# ---------------------------------------------------------------------------------------
# Working hours


@dataclass(frozen=True)
class WeeklyHours:
    """A therapist works ``start``–``end`` (wall clock) on ``weekday`` (0=Monday) at a location,
    on local dates from ``valid_from`` up to (not including) ``valid_until`` (None: no bound)."""

    location_id: str
    weekday: int
    start: time
    end: time
    valid_from: date | None = None
    valid_until: date | None = None

    def holds_on(self, day: date) -> bool:
        """Whether this week's version is the one in force on local date ``day``."""
        return (self.valid_from is None or self.valid_from <= day) and (
            self.valid_until is None or day < self.valid_until
        )


def _span(hours: WeeklyHours) -> str:
    return f"{hours.start:%H:%M}-{hours.end:%H:%M}"


def check_hours_do_not_overlap(hours: Sequence[WeeklyHours]) -> None:
    """A therapist cannot be at two places (or twice at one) at the same wall-clock time."""
    by_day: dict[int, list[WeeklyHours]] = defaultdict(list)
    for h in hours:
        by_day[h.weekday].append(h)
    for weekday, items in by_day.items():
        items.sort(key=lambda h: h.start)
        for earlier, later in itertools.pairwise(items):
            if later.start < earlier.end:
                raise OverlappingHours(
                    f"working hours overlap on weekday {weekday}: "
                    f"{_span(earlier)} and {_span(later)}",
                    field="working_hours",
                )


@functools.lru_cache(maxsize=4096)
def local_datetime(day: date, clock: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of a wall-clock time on ``day``; a time the DST jump skips moves forward.

    Memoized: every therapist's week has the same few times, and availability asks for
    them on every day of a window (the conversions were a quarter of an answer's cost).
    """
    local = datetime.combine(day, clock, tzinfo=tz)
    as_utc = local.astimezone(UTC)
    if as_utc.astimezone(tz).replace(tzinfo=None) != local.replace(tzinfo=None):
        # Non-existent wall time (spring forward): take the instant it maps to after the gap.
        return datetime.combine(day, clock, tzinfo=tz).replace(fold=1).astimezone(UTC)
    return as_utc


def working_spans(
    hours: Iterable[WeeklyHours], location_id: str, tz: ZoneInfo, window: Interval
) -> list[Interval]:
    """The UTC spans in ``window`` when the weekly ``hours`` put someone at ``location_id``."""
    by_weekday: dict[int, list[WeeklyHours]] = defaultdict(list)
    for h in hours:
        if h.location_id == location_id:
            by_weekday[h.weekday].append(h)
    if not by_weekday:
        return []
    spans = []
    day = window.start.astimezone(tz).date() - timedelta(days=1)
    last = window.end.astimezone(tz).date()
    while day <= last:
        for h in by_weekday.get(day.weekday(), ()):
            if not h.holds_on(day):
                continue
            span = Interval(local_datetime(day, h.start, tz), local_datetime(day, h.end, tz))
            if span.overlaps(window):
                spans.append(Interval(max(span.start, window.start), min(span.end, window.end)))
        day += timedelta(days=1)
    return merge(spans)


# ---------------------------------------------------------------------------------------
# Availability


@dataclass(frozen=True)
class Treatment:
    """What is booked: how long it takes and how long the room needs after it."""

    id: str
    modality: str
    duration_minutes: int
    buffer_minutes: int = 0

    @cached_property
    def duration(self) -> timedelta:
        return timedelta(minutes=self.duration_minutes)

    @cached_property
    def occupied(self) -> timedelta:
        """Therapist and room are held for the treatment plus the turnover buffer."""
        return timedelta(minutes=self.duration_minutes + self.buffer_minutes)


@dataclass
class TherapistCalendar:
    """A therapist as availability sees them: skills, weekly hours, and every busy span.

    ``busy`` holds sessions at ANY location (buffers included), time off and outside
    calendar blocks: a therapist is in one place at a time.
    """

    id: str
    modalities: frozenset[str]
    hours: list[WeeklyHours]
    busy: list[Interval] = field(default_factory=list)
    #: Sessions per local day, used to spread work: the least booked therapist is chosen.
    load_by_day: dict[date, int] = field(default_factory=dict)


@dataclass
class RoomCalendar:
    id: str
    busy: list[Interval] = field(default_factory=list)


@dataclass(frozen=True)
class Slot:
    start: datetime
    end: datetime
    therapist_id: str
    room_id: str


@dataclass(frozen=True)
class BookingPolicy:
    """A location's limits on when clients may book."""

    min_notice: timedelta = timedelta(hours=1)
    horizon: timedelta = timedelta(days=90)
    step: timedelta = timedelta(minutes=15)


def least_booked(therapists: Sequence[TherapistCalendar], day: date) -> TherapistCalendar:
    """The therapist with the fewest sessions on ``day``; ties go to the lowest id."""
    return min(therapists, key=lambda t: (t.load_by_day.get(day, 0), t.id))


def choose_for_booking(
    treatment: Treatment,
    location_id: str,
    tz: ZoneInfo,
    start: datetime,
    therapists: Sequence[TherapistCalendar],
    rooms: Sequence[RoomCalendar],
    *,
    therapist_id: str | None = None,
) -> tuple[str, str]:
    """Pick (therapist, room) for a booking at ``start``, or raise the precise reason."""
    occupied = Interval(start, start + treatment.occupied)
    needed = Interval(start, start + treatment.duration)
    qualified = [t for t in therapists if treatment.modality in t.modalities]
    if therapist_id is not None:
        qualified = [t for t in qualified if t.id == therapist_id]
        if not qualified:
            raise TherapistUnavailable(
                f"therapist {therapist_id} does not offer {treatment.modality}"
            )
    # Working spans clipped to the treatment itself: it fits when one of them is all of it
    # (the spans of the day before are still looked at, for hours past midnight).
    working = [
        t
        for t in qualified
        if any(span.contains(needed) for span in working_spans(t.hours, location_id, tz, needed))
    ]
    if not working:
        raise OutsideWorkingHours(
            "no qualified therapist works at this location at that time"
            if therapist_id is None
            else f"therapist {therapist_id} does not work at this location at that time"
        )
    free = [t for t in working if BusyIndex(t.busy).is_free(occupied)]
    if not free:
        raise SlotTaken(
            "every qualified therapist is booked or off at that time"
            if therapist_id is None
            else f"therapist {therapist_id} is booked or off at that time"
        )
    room_id = next(
        (r.id for r in sorted(rooms, key=lambda r: r.id) if BusyIndex(r.busy).is_free(occupied)),
        None,
    )
    if room_id is None:
        raise NoRoomFree("no room at this location is free at that time")
    return least_booked(free, start.astimezone(tz).date()).id, room_id


def check_booking_window(start: datetime, now: datetime, policy: BookingPolicy) -> None:
    """Refuse starts inside the minimum notice or past the horizon."""
    if start < now + policy.min_notice:
        minutes = int(policy.min_notice.total_seconds() // 60)
        raise TooSoon(f"sessions must be booked at least {minutes} minutes ahead")
    if start > now + policy.horizon:
        raise TooFar(f"sessions can be booked at most {policy.horizon.days} days ahead")


# ---------------------------------------------------------------------------------------
# The session state machine

BOOKED = "booked"
CONFIRMED = "confirmed"
CHECKED_IN = "checked_in"
COMPLETED = "completed"
CANCELLED = "cancelled"
NO_SHOW = "no_show"

#: Statuses that hold the therapist's and the room's time.
BLOCKING_STATUSES = (BOOKED, CONFIRMED, CHECKED_IN, COMPLETED)

#: action -> (statuses it may start from, status it leads to)
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "confirm": (frozenset({BOOKED}), CONFIRMED),
    "reschedule": (frozenset({BOOKED, CONFIRMED}), BOOKED),
    "cancel": (frozenset({BOOKED, CONFIRMED}), CANCELLED),
    "check_in": (frozenset({BOOKED, CONFIRMED}), CHECKED_IN),
    "complete": (frozenset({CHECKED_IN}), COMPLETED),
    "no_show": (frozenset({BOOKED, CONFIRMED}), NO_SHOW),
}


def next_status(current: str, action: str) -> str:
    """The status after ``action``; :class:`IllegalTransition` names why it cannot happen."""
    allowed_from, target = TRANSITIONS[action]
    if current not in allowed_from:
        readable = action.replace("_", "-")
        raise IllegalTransition(
            f"cannot {readable} a session that is {current.replace('_', ' ')}; "
            f"allowed from: {', '.join(sorted(allowed_from))}"
        )
    return target


def is_late_cancel(start: datetime, now: datetime, late_cancel_window: timedelta) -> bool:
    """A cancel within the location's window before the start is late (fees, statistics)."""
    return now > start - late_cancel_window
