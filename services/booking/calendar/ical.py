"""iCalendar, with no I/O: what booking writes and what it reads.

- The ICS feeds: a therapist's or a location's sessions as one calendar an app subscribes
  to. Each session is one VEVENT with a stable UID; SEQUENCE follows the session's version
  (version - 1), so a reschedule or cancel replaces the event instead of adding one.
  Clients appear by first name and last initial only; time off appears as "Time off"
  without its reason.
- What we write for a session into a CalDAV calendar: the same VEVENT, in a VCALENDAR
  of its own with its VTIMEZONE (STATUS:CANCELLED on cancel).
- Which events of a therapist's own calendar make them busy (cancelled, transparent and
  our own events do not; all-day events do; recurring ones are expanded).
- How a push calendar has drifted from the sessions it should hold.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from services.booking import db, domain
from shared.timeutil import zone
from shared.validation import one_line

if TYPE_CHECKING:
    import icalendar

# icalendar and recurring_ical_events are imported where used (a few MB a booking process
# carries only once a feed is read or a calendar linked).

PRODID = "-//Clinic Backbone//Booking//EN"
UID_DOMAIN = "booking.clinic-backbone"


def session_uid(session_id: str) -> str:
    return f"{session_id}@{UID_DOMAIN}"


def client_label(client: db.Client) -> str:
    return f"{client.first_name} {client.last_name[:1]}."


def session_vevent(row: db.Session, room_name: str, stamp: datetime) -> icalendar.Event:
    """One session as a VEVENT, in its location's zone."""
    import icalendar

    tz = zone(row.location.timezone)
    event = icalendar.Event()
    event.add("uid", session_uid(row.id))
    event.add("dtstamp", stamp)
    event.add("sequence", row.version - 1)
    event.add("dtstart", row.start_at.astimezone(tz))
    event.add("dtend", row.end_at.astimezone(tz))
    event.add("summary", one_line(f"{row.treatment.name}: {client_label(row.client)}"))
    event.add("location", one_line(f"{room_name}, {row.location.name}"))
    event.add("status", "CANCELLED" if row.status == domain.CANCELLED else "CONFIRMED")
    event.add("last-modified", row.updated_at)
    return event


def time_off_vevent(entry: db.TimeOff, stamp: datetime) -> icalendar.Event:
    import icalendar

    event = icalendar.Event()
    event.add("uid", f"timeoff-{entry.id}@{UID_DOMAIN}")
    event.add("dtstamp", stamp)
    event.add("dtstart", entry.start_at)
    event.add("dtend", entry.end_at)
    event.add("summary", "Time off")
    event.add("transp", "OPAQUE")
    return event


def feed(
    name: str,
    sessions: Iterable[db.Session],
    room_names: dict[str, str],
    stamp: datetime,
    time_off: Iterable[db.TimeOff] = (),
) -> bytes:
    """The whole feed, with a VTIMEZONE for every zone it uses."""
    import icalendar

    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    # An X- property is not escaped by icalendar unless given as vText.
    cal.add("x-wr-calname", icalendar.vText(one_line(name)))
    for row in sessions:
        cal.add_component(session_vevent(row, room_names.get(row.room_id, "Room"), stamp))
    for entry in time_off:
        cal.add_component(time_off_vevent(entry, stamp))
    cal.add_missing_timezones()
    return bytes(cal.to_ical())


# ---------------------------------------------------------------------------------------
# One session as a CalDAV resource, and which events are ours


OUR_UID_SUFFIX = f"@{UID_DOMAIN}"


def is_ours(uid: str) -> bool:
    """An event this booking service wrote (a session or time off), known by its UID."""
    return uid.endswith(OUR_UID_SUFFIX)


def session_id_of(uid: str) -> str | None:
    """The session behind one of our session UIDs (``None`` for time off or foreign UIDs)."""
    if not is_ours(uid) or uid.startswith("timeoff-"):
        return None
    return uid.removesuffix(OUR_UID_SUFFIX)


@functools.lru_cache(maxsize=64)
def vtimezone(tzid: str) -> bytes:
    """The VTIMEZONE of an IANA zone, serialized once: building it takes milliseconds."""
    import icalendar

    return bytes(icalendar.Timezone.from_tzinfo(zone(tzid)).to_ical())


def session_resource(row: db.Session, room_name: str, stamp: datetime) -> bytes:
    """A session as one CalDAV resource: a VCALENDAR holding its VEVENT and VTIMEZONE."""
    event = bytes(session_vevent(row, room_name, stamp).to_ical())
    head = f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:{PRODID}\r\n".encode()
    return head + vtimezone(row.location.timezone) + event + b"END:VCALENDAR\r\n"


# ---------------------------------------------------------------------------------------
# Busy time from a therapist's own calendar


@dataclass(frozen=True, order=True)
class BusySpan:
    start: datetime
    end: datetime
    uid: str


def _as_utc(value: date | datetime, tz: ZoneInfo) -> datetime:
    """Dates (all-day) start at local midnight, floating times are local, in ``tz``."""
    if not isinstance(value, datetime):
        return datetime.combine(value, time(0), tzinfo=tz).astimezone(UTC)
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=tz).astimezone(UTC)
    return value.astimezone(UTC)


def _is_free(event: Any) -> bool:
    if str(event.get("status", "")).upper() == "CANCELLED":
        return True
    if str(event.get("transp", "")).upper() == "TRANSPARENT":
        return True
    # Outlook/Exchange mark "show as free" this way on exported calendars.
    return str(event.get("x-microsoft-cdo-busystatus", "")).upper() == "FREE"


#: Busy spans read from one pulled calendar at most: one ``FREQ=MINUTELY`` event would
#: otherwise expand to ~174,000 rows over the horizon, in one write transaction.
MAX_BUSY_SPANS = 5000


def busy_spans(
    calendars: Iterable[bytes | str], window: domain.Interval, tz: ZoneInfo
) -> list[BusySpan]:
    """Busy spans overlapping ``window`` in these iCalendar texts, recurrences expanded.

    ``tz`` places all-day events and floating times. Raises ``ValueError`` on a text
    that is not iCalendar at all. At most :data:`MAX_BUSY_SPANS` (see :func:`capped_busy_spans`).
    """
    return capped_busy_spans(calendars, window, tz)[0]


def capped_busy_spans(
    calendars: Iterable[bytes | str],
    window: domain.Interval,
    tz: ZoneInfo,
    limit: int = MAX_BUSY_SPANS,
) -> tuple[list[BusySpan], bool]:
    """:func:`busy_spans`, and whether the expansion was cut at ``limit`` spans (the
    earliest ``limit`` are kept; recurrences are expanded lazily, in order, so a runaway
    series costs no more than the limit)."""
    import icalendar
    import recurring_ical_events

    spans: set[BusySpan] = set()
    # A floating or all-day event may sit up to a day off UTC: ask wide, then clip exactly.
    wide_start, wide_end = window.start - timedelta(days=1), window.end + timedelta(days=1)
    for text in calendars:
        try:
            cal = icalendar.Calendar.from_ical(text)
        except Exception as exc:  # icalendar raises ValueError and friends
            # Not the parser's message: it quotes the text, and that is the server's answer.
            raise ValueError(f"not an iCalendar ({type(exc).__name__})") from exc
        query = recurring_ical_events.of(cal, skip_bad_series=True)
        for event in query.after(wide_start):
            begins = event.get("dtstart")
            if begins is not None and _as_utc(begins.dt, tz) >= wide_end:
                break  # chronological: nothing later overlaps the window
            if len(spans) >= limit:
                return sorted(spans)[:limit], True
            uid = str(event.get("uid", ""))
            if is_ours(uid) or _is_free(event):
                continue
            start_prop, end_prop = event.get("dtstart"), event.get("dtend")
            if start_prop is None or end_prop is None:
                continue
            start, end = _as_utc(start_prop.dt, tz), _as_utc(end_prop.dt, tz)
            if end <= start or end <= window.start or start >= window.end:
                continue
            spans.add(BusySpan(start, end, uid[:500]))
    return sorted(spans), False


# ---------------------------------------------------------------------------------------
# Reconcile: a push calendar against the sessions it should hold


@dataclass(frozen=True)
class EventState:
    """What matters of one of our events: enough to see it was changed or is stale."""

    uid: str
    sequence: int
    start: datetime
    end: datetime
    status: str


@dataclass(frozen=True)
class FoundEvent:
    href: str
    state: EventState


def expected_state(row: db.Session) -> EventState:
    return EventState(
        uid=session_uid(row.id),
        sequence=row.version - 1,
        start=row.start_at,
        end=row.end_at,
        status="CANCELLED" if row.status == domain.CANCELLED else "CONFIRMED",
    )


def our_events(resources: Iterable[tuple[str, bytes | str]]) -> list[FoundEvent]:
    """Our session events among ``(href, iCalendar text)`` resources; others are skipped."""
    import icalendar

    found = []
    for href, text in resources:
        try:
            cal = icalendar.Calendar.from_ical(text)
        except Exception:  # noqa: S112 (a broken foreign resource is not ours to judge)
            continue
        for event in cal.walk("VEVENT"):
            uid = str(event.get("uid", ""))
            if session_id_of(uid) is None or event.get("recurrence-id") is not None:
                continue
            start, end = event.get("dtstart"), event.get("dtend")
            if start is None or end is None:
                continue
            found.append(
                FoundEvent(
                    href,
                    EventState(
                        uid=uid,
                        sequence=int(event.get("sequence", 0)),
                        start=_as_utc(start.dt, ZoneInfo("UTC")),
                        end=_as_utc(end.dt, ZoneInfo("UTC")),
                        status=str(event.get("status", "CONFIRMED")).upper(),
                    ),
                )
            )
    return found


@dataclass(frozen=True)
class Repairs:
    #: Sessions to write again: missing from the calendar, or changed there by hand.
    rewrite: list[str]
    #: Our events the calendar should not hold (session gone or no longer its own).
    remove: list[FoundEvent]


def plan_repairs(expected: Mapping[str, EventState], found: Iterable[FoundEvent]) -> Repairs:
    """Compare what a calendar holds with ``expected`` (session id -> state)."""
    seen: dict[str, list[FoundEvent]] = {}
    for event in found:
        seen.setdefault(event.state.uid, []).append(event)
    rewrite, remove = [], []
    for session_id, state in expected.items():
        copies = seen.pop(state.uid, [])
        if not copies or copies[0].state != state:
            rewrite.append(session_id)
        remove.extend(copies[1:])  # one UID twice (under two names): keep one copy
    for copies in seen.values():
        remove.extend(copies)
    return Repairs(sorted(rewrite), sorted(remove, key=lambda e: e.href))
