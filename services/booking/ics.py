"""ICS feeds: a therapist's or a location's sessions as an iCalendar a calendar app subscribes to.

Each session is one VEVENT with a stable UID; SEQUENCE follows the session's version, so a
reschedule or cancel replaces the event instead of adding one. Clients appear by first
name and last initial only; time off appears as "Time off" without its reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import icalendar

from services.booking import db, domain
from shared.timeutil import zone
from shared.validation import one_line

PRODID = "-//Clinic Backbone//Booking//EN"
UID_DOMAIN = "booking.clinic-backbone"


def session_uid(session_id: str) -> str:
    return f"{session_id}@{UID_DOMAIN}"


def client_label(client: db.Client) -> str:
    return f"{client.first_name} {client.last_name[:1]}."


def session_vevent(row: db.Session, room_name: str, stamp: datetime) -> icalendar.Event:
    """One session as a VEVENT, in its location's zone."""
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
    event = icalendar.Event()
    event.add("uid", f"timeoff-{entry.id}@{UID_DOMAIN}")
    event.add("dtstamp", stamp)
    event.add("dtstart", entry.start_at)
    event.add("dtend", entry.end_at)
    event.add("summary", "Time off")
    event.add("transp", "OPAQUE")
    return event


def calendar(
    name: str,
    sessions: Iterable[db.Session],
    room_names: dict[str, str],
    stamp: datetime,
    time_off: Iterable[db.TimeOff] = (),
) -> bytes:
    """The whole feed, with a VTIMEZONE for every zone it uses."""
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
