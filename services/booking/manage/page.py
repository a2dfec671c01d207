"""The client's page as HTML: plain string templates, every value escaped, phone-sized
(``assets/``). Shows first name, local time, location, therapist and status; never the
treatment or anything else about the client's health."""

from __future__ import annotations

import html
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from string import Template

from services.booking import db, domain
from shared.timeutil import zone

HERE = Path(__file__).resolve().parent / "assets"
LAYOUT = Template((HERE / "layout.html").read_text())
CSS = (HERE / "manage.css").read_text()

STATUS_TEXT = {
    domain.BOOKED: "Booked",
    domain.CONFIRMED: "Confirmed",
    domain.CHECKED_IN: "Checked in",
    domain.COMPLETED: "Completed",
    domain.CANCELLED: "Cancelled",
    domain.NO_SHOW: "Missed",
}

DONE_TEXT = {
    "confirmed": "Thank you: your appointment is confirmed.",
    "cancelled": "Your appointment is cancelled.",
    "moved": "Your appointment has been moved to the new time below.",
}

#: Security headers of every answer: the URL holds the credential, so it must not leak
#: through the Referer to other sites, caches or frames. ``same-origin`` rather than
#: ``no-referrer``: with the latter Chromium sends ``Origin: null`` on our own form posts.
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def clock(moment: datetime) -> str:
    hour = moment.hour % 12 or 12
    return f"{hour}:{moment.minute:02d} {'AM' if moment.hour < 12 else 'PM'}"


def long_day(day: date) -> str:
    return f"{day:%A}, {day:%B} {day.day}, {day.year}"


def page(title: str, body: str, css_url: str) -> str:
    return LAYOUT.substitute(title=e(title), body=body, css_url=e(css_url))


@dataclass
class View:
    """One session as the page shows it."""

    row: db.Session
    token: str
    form_token: str
    now: datetime

    @property
    def local_start(self) -> datetime:
        return self.row.start_at.astimezone(zone(self.row.location.timezone))

    @property
    def actionable(self) -> bool:
        return self.row.status in {domain.BOOKED, domain.CONFIRMED} and self.row.start_at > self.now

    @property
    def late_cancel(self) -> bool:
        window = timedelta(hours=self.row.location.late_cancel_hours)
        return domain.is_late_cancel(self.row.start_at, self.now, window)


def message_html(text: str | None, problem: bool = False) -> str:
    if not text:
        return ""
    role = "alert" if problem else "status"
    css = "message problem" if problem else "message"
    return f'<p class="{css}" role="{role}">{e(text)}</p>'


def hidden(view: View) -> str:
    return f'<input type="hidden" name="form_token" value="{e(view.form_token)}">'


def session_page(view: View, *, message: str | None = None, problem: bool = False) -> str:
    row, local = view.row, view.local_start
    where = row.location
    parts = [
        message_html(message, problem),
        f"<p>Hi {e(row.client.first_name)}, here is your appointment.</p>",
        "<dl>",
        f"<dt>When</dt><dd>{e(long_day(local.date()))}<br>"
        f"{e(clock(local))} ({e(local.tzname())})</dd>",
        f"<dt>Where</dt><dd>{e(where.name)}<br>{e(where.address)}</dd>",
        f"<dt>With</dt><dd>{e(row.therapist.name)}</dd>",
        f'<dt>Status</dt><dd><span class="status">{e(STATUS_TEXT.get(row.status, row.status))}'
        "</span></dd>",
        "</dl>",
    ]
    base = f"/m/{e(view.token)}"
    if view.actionable:
        if row.status == domain.BOOKED:
            parts.append(
                f'<form method="post" action="{base}/confirm">{hidden(view)}'
                '<button type="submit">Confirm</button></form>'
            )
        parts.append(
            f'<form method="get" action="{base}/reschedule">'
            '<button type="submit" class="secondary">Reschedule</button></form>'
        )
        note = ""
        described = ""
        if view.late_cancel:
            hours = row.location.late_cancel_hours
            note = (
                f'<p class="note" id="late-note">Cancelling now is a late cancellation: it is '
                f"less than {hours} hours before your appointment.</p>"
            )
            described = ' aria-describedby="late-note"'
        parts.append(
            f'<form method="post" action="{base}/cancel">{hidden(view)}{note}'
            f'<button type="submit" class="danger"{described}>Cancel appointment</button></form>'
        )
    parts.append(
        f'<p class="small">Questions? Call {e(where.name)} at '
        f'<a href="tel:{e(where.phone)}">{e(where.phone)}</a>.</p>'
    )
    return "\n".join(parts)


def reschedule_page(
    view: View, slots: list[domain.Slot], *, message: str | None = None, problem: bool = False
) -> str:
    tz = zone(view.row.location.timezone)
    by_day: dict[date, list[datetime]] = defaultdict(list)
    for slot in slots:
        if slot.start != view.row.start_at:
            local = slot.start.astimezone(tz)
            by_day[local.date()].append(local)
    now_at = view.local_start
    parts = [
        message_html(message, problem),
        f"<p>Now: {e(long_day(now_at.date()))}, {e(clock(now_at))} at "
        f"{e(view.row.location.name)}.</p>",
    ]
    if not by_day:
        parts.append(
            "<p>There are no free times in the next two weeks. Please call us at "
            f'<a href="tel:{e(view.row.location.phone)}">{e(view.row.location.phone)}</a>.</p>'
        )
    else:
        parts.append(f'<form method="post" action="/m/{e(view.token)}/reschedule">{hidden(view)}')
        parts.append("<h2>Choose a new time</h2>")
        for number, (day, starts) in enumerate(sorted(by_day.items())):
            parts.append(f'<fieldset><legend>{e(long_day(day))}</legend><div class="times">')
            for index, start in enumerate(starts):
                ident = f"t{number}-{index}"
                value = start.astimezone(zone("UTC")).isoformat()
                parts.append(
                    f'<label for="{ident}"><input type="radio" name="start" id="{ident}" '
                    f'value="{e(value)}" required><span>{e(clock(start))}</span></label>'
                )
            parts.append("</div></fieldset>")
        parts.append('<button type="submit">Reschedule</button></form>')
    parts.append(f'<p><a href="/m/{e(view.token)}">Keep my current time</a></p>')
    return "\n".join(parts)


def gone_page() -> str:
    return (
        "<p>This link is not valid, or it has expired. Please use the latest text from the "
        "clinic, or call the clinic.</p>"
    )
