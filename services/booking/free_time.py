"""Free time, computed with no I/O: the offers of a window from each therapist's hours and
busy spans and each room's busy spans, as ``services.booking.availability`` reads them.

Integers (microseconds since the epoch), not datetimes: an answer tests thousands of
starts. The rules are the booking's (``domain.choose_for_booking``, a test holds every
start of random calendars to it): a start is offered when a qualified therapist works at
the location for the whole treatment, neither the therapist (anywhere) nor a room is held
during the treatment plus its buffer; among the free therapists the least booked that local
day is proposed (ties to the lowest id), and the first free room by id. Starts lie on the
location's wall-clock grid (:00, :15, … of the local day), counted from each free piece.
"""

from __future__ import annotations

import bisect
import functools
import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from operator import itemgetter, lt
from zoneinfo import ZoneInfo

from pydantic_core import to_json

from services.booking import domain

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
#: A span as two instants in microseconds since the epoch, ``[start, end)``.
Span = tuple[int, int]
#: A free start (microseconds), the therapist and the room a booking there would get.
Offer = tuple[int, str, str]


def micros(at: datetime) -> int:
    """An aware instant as microseconds since the epoch (exact)."""
    return (at - EPOCH) // US


def instant(us: int) -> datetime:
    """The aware UTC instant of ``us`` (exact: whole seconds, then the microseconds)."""
    seconds, rest = divmod(us, 1_000_000)
    at = datetime.fromtimestamp(seconds, UTC)
    return at.replace(microsecond=rest) if rest else at


def local_date(us: int, tz: ZoneInfo) -> date:
    """The local date of ``us`` (zone offsets are whole seconds, so the second decides)."""
    return datetime.fromtimestamp(us // 1_000_000, tz).date()


@dataclass
class Staff:
    """A therapist as the search sees them: weekly hours and merged busy spans."""

    id: str
    hours: tuple[domain.WeeklyHours, ...]
    busy: list[Span]
    #: Sessions (at any location) per local day: the least booked is proposed.
    load: dict[date, int]


def bookable_window(
    rule: domain.Treatment,
    policy: domain.BookingPolicy,
    now: datetime,
    start: datetime,
    end: datetime,
) -> tuple[datetime, datetime] | None:
    """``[start, end)`` cut to the location's notice and horizon (None: nothing left)."""
    earliest = max(start, now + policy.min_notice)
    latest = min(end, now + policy.horizon + rule.duration)
    return (earliest, latest) if earliest < latest else None


_START, _END = itemgetter(0), itemgetter(1)


def merge(spans: Iterable[Span]) -> list[Span]:
    """Sorted, non-overlapping cover of ``spans`` (touching spans join)."""
    ordered = sorted(spans)
    # Usual case: one therapist's (or room's) sessions never overlap; nothing to join.
    if all(map(lt, map(_END, ordered), map(_START, itertools.islice(ordered, 1, None)))):
        return ordered
    out: list[Span] = []
    for s, e in ordered:
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


class _Grid:
    """The first start on the location's wall-clock grid (:00, :15, … of the local day) at
    or after an instant, as ``domain``'s rule; memoized, pieces share their starts."""

    def __init__(self, step: timedelta, tz: ZoneInfo) -> None:
        self.step_minutes = int(step.total_seconds() // 60)
        self.step = step // US
        self.tz = tz
        self._first: dict[int, int] = {}

    def first(self, us: int) -> int:
        found = self._first.get(us)
        if found is None:
            seconds, micro = divmod(us, 1_000_000)
            local = datetime.fromtimestamp(seconds, self.tz)
            offset = (-(local.hour * 60 + local.minute)) % self.step_minutes
            found = us + offset * 60_000_000 - local.second * 1_000_000 - micro
            if found < us:
                found += self.step
            self._first[us] = found
        return found


def free_starts(
    working: Sequence[Span],
    busy: Sequence[Span],
    busy_starts: Sequence[int],
    duration: int,
    occupied: int,
    grid: _Grid,
) -> list[range]:
    """Grid starts when the treatment fits in ``working`` and its time plus buffer misses
    every ``busy`` span (the buffer may run past closing, not into a booking), as runs."""
    step = grid.step
    out: list[range] = []
    for w0, w1 in working:
        cursor = w0
        i = bisect.bisect_right(busy_starts, w0) - 1
        if i >= 0 and busy[i][1] > cursor:
            cursor = busy[i][1]
        i += 1
        n = len(busy)
        while cursor < w1:
            nxt = busy_starts[i] if i < n else None
            last = w1 - duration
            if nxt is not None and nxt - occupied < last:
                last = nxt - occupied
            if cursor <= last:
                first = grid.first(cursor)
                if first <= last:
                    out.append(range(first, last + 1, step))
            if nxt is None or nxt >= w1:
                break
            cursor = max(cursor, busy[i][1])
            i += 1
    return out


class _Days:
    """Local dates of instants, memoized; a run of starts is split by local date."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._seen: dict[int, tuple[date, timedelta | None]] = {}

    def _local(self, us: int) -> tuple[date, timedelta | None]:
        found = self._seen.get(us)
        if found is None:
            # Zone offsets are whole seconds: the second decides the date.
            local = datetime.fromtimestamp(us // 1_000_000, self.tz)
            found = self._seen[us] = (local.date(), local.utcoffset())
        return found

    def split(self, starts: range) -> list[tuple[date, range]]:
        """``starts`` (less than a day of one working span) by local date. The same date and
        offset at both ends: no clock change between (two in one day never happen), so
        one date throughout; otherwise each start on its own."""
        first, last = self._local(starts[0]), self._local(starts[-1])
        if first == last:
            return [(first[0], starts)]
        return [(self._local(s)[0], range(s, s + 1)) for s in starts]


def working_spans(
    hours: Sequence[domain.WeeklyHours], location_id: str, tz: ZoneInfo, start: int, end: int
) -> list[Span]:
    """Merged spans in ``[start, end)`` when ``hours`` put the therapist at the location."""
    window = domain.Interval(instant(start), instant(end))
    return [
        (micros(iv.start), micros(iv.end))
        for iv in domain.working_spans(hours, location_id, tz, window)
    ]


def _worst_first(run: tuple[int, str, range]) -> tuple[int, str]:
    return run[0], run[1]


def offers(
    rule: domain.Treatment,
    location_id: str,
    tz: ZoneInfo,
    earliest: datetime,
    latest: datetime,
    staff: Sequence[Staff],
    rooms: Sequence[tuple[str, list[Span]]],
    step: timedelta,
) -> list[Offer]:
    """One offer ``(start, therapist, room)`` per free start in ``[earliest, latest)``, by
    start: the least booked free therapist that local day (ties to the lowest id) and the
    first free room by id."""
    start, end = micros(earliest), micros(latest)
    duration, occupied = rule.duration // US, rule.occupied // US
    grid = _Grid(step, tz)
    hours_memo: dict[tuple[domain.WeeklyHours, ...], list[Span]] = {}
    days = _Days(tz)
    # Each local day's runs of free starts, with the therapist's load that day.
    by_day: dict[date, list[tuple[int, str, range]]] = defaultdict(list)
    for therapist in staff:
        working = hours_memo.get(therapist.hours)
        if working is None:
            working = hours_memo[therapist.hours] = working_spans(
                therapist.hours, location_id, tz, start, end
            )
        if not working:
            continue
        busy, loads = therapist.busy, therapist.load
        for run in free_starts(working, busy, [b[0] for b in busy], duration, occupied, grid):
            for day, part in days.split(run):
                by_day[day].append((loads.get(day, 0), therapist.id, part))
    # Per day, the most loaded (then highest id) first: each better therapist overwrites.
    best: dict[int, str] = {}
    for runs in by_day.values():
        runs.sort(key=_worst_first, reverse=True)
        for _, tid, part in runs:
            best.update(dict.fromkeys(part, tid))

    return _with_rooms(best, rooms, occupied)


def _with_rooms(
    best: dict[int, str], rooms: Sequence[tuple[str, list[Span]]], occupied: int
) -> list[Offer]:
    """Each start with the first room by id free for the treatment plus its buffer (a
    start no room can hold is not offered)."""
    indexed = [(rid, [b[0] for b in spans], [b[1] for b in spans]) for rid, spans in rooms]
    indexed.sort()
    out: list[Offer] = []
    for s in sorted(best):
        until = s + occupied
        for rid, starts, ends in indexed:
            i = bisect.bisect_right(ends, s)
            if i == len(starts) or starts[i] >= until:
                out.append((s, best[s], rid))
                break
    return out


def as_slots(found: Sequence[Offer], duration: timedelta) -> list[domain.Slot]:
    length = duration // US
    return [domain.Slot(instant(s), instant(s + length), tid, rid) for s, tid, rid in found]


def as_json(found: Sequence[Offer], duration: timedelta) -> bytes:
    """The answer's JSON, byte for byte what pydantic writes for ``list[domain.Slot]``
    (a test holds them equal), without building hundreds of datetimes and dataclasses."""
    length = duration // US
    stamps: dict[int, str] = {}
    tails: dict[tuple[str, str], str] = {}
    parts = []
    for s, tid, rid in found:
        start = stamps.get(s)
        if start is None:
            start = stamps[s] = _iso(s)
        end = stamps.get(s + length)
        if end is None:
            end = stamps[s + length] = _iso(s + length)
        tail = tails.get((tid, rid))
        if tail is None:
            tail = tails[tid, rid] = (
                f'"therapist_id":{to_json(tid).decode()},"room_id":{to_json(rid).decode()}}}'
            )
        parts.append(f'{{"start":"{start}","end":"{end}",{tail}')
    return ("[" + ",".join(parts) + "]").encode()


_UNIX_DAY = date(1970, 1, 1).toordinal()


@functools.lru_cache(maxsize=4096)
def _day_text(days: int) -> str:
    """``YYYY-MM-DD`` of a day counted from 1970-01-01 (a window has a few dozen)."""
    return date.fromordinal(_UNIX_DAY + days).isoformat()


def _iso(us: int) -> str:
    """RFC 3339 in UTC as pydantic writes it: ``Z``, microseconds only when not zero."""
    seconds, micro = divmod(us, 1_000_000)
    days, second = divmod(seconds, 86_400)
    minute, second = divmod(second, 60)
    text = f"{_day_text(days)}T{_CLOCK[minute]}:{second:02d}"
    return f"{text}.{micro:06d}Z" if micro else text + "Z"


#: ``HH:MM`` of each minute of a day.
_CLOCK = [f"{m // 60:02d}:{m % 60:02d}" for m in range(24 * 60)]


def available_slots(
    treatment: domain.Treatment,
    location_id: str,
    tz: ZoneInfo,
    window: domain.Interval,
    therapists: Sequence[domain.TherapistCalendar],
    rooms: Sequence[domain.RoomCalendar],
    *,
    now: datetime,
    policy: domain.BookingPolicy = domain.BookingPolicy(),
) -> list[domain.Slot]:
    """:func:`slots` over the domain's calendars (what the booking check reads too): the
    rules stated once, on the shapes ``domain.choose_for_booking`` takes."""
    bookable = bookable_window(treatment, policy, now, window.start, window.end)
    if bookable is None:
        return []
    staff = [
        Staff(
            t.id,
            tuple(t.hours),
            merge((micros(b.start), micros(b.end)) for b in t.busy),
            dict(t.load_by_day),
        )
        for t in therapists
        if treatment.modality in t.modalities
    ]
    held = [(r.id, merge((micros(b.start), micros(b.end)) for b in r.busy)) for r in rooms]
    found = offers(treatment, location_id, tz, *bookable, staff, held, policy.step)
    return as_slots(found, treatment.duration)
