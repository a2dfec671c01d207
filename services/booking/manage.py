"""The client's own page for one session: ``GET /m/{token}``, no key, phone-sized HTML.

Why it looks like this:

- The link is the credential: an itsdangerous signature over the session id (secret from
  ``BOOKING_SECRET_KEY``). It is valid until a day after the session ends, counted from
  the session as it is now, so a reschedule extends it. A tampered or expired link is a
  404 that reveals nothing.
- GET never changes anything. Every action is a POST through the same use cases as the
  API (same events, same texts). A POST is refused when the browser says it comes from
  another site (``Sec-Fetch-Site``, ``Origin``), and carries a hidden form token bound to
  the session's version: a double submit, or a form older than the session, changes
  nothing a second time.
- The page shows first name, local time, location, therapist and status; never the
  treatment or anything else about the client's health.
"""

from __future__ import annotations

import html
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import parse_qs, urlsplit

from itsdangerous import BadSignature, URLSafeSerializer

from services.booking import db, domain, usecases
from shared.errors import DomainError
from shared.timeutil import as_utc, zone

HERE = Path(__file__).resolve().parent / "manage_page"
LAYOUT = Template((HERE / "layout.html").read_text())
CSS = (HERE / "manage.css").read_text()

#: How long after a session's end its link still opens.
VALID_AFTER_END = timedelta(days=1)
#: How far ahead the page offers new times.
RESCHEDULE_DAYS = 14
#: What a client's cancel says in the session's ``reason`` (never shown to others).
CLIENT_CANCEL_REASON = "cancelled by the client on their page"

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


class ManageLinks:
    """Signs and reads the page's link and its form tokens."""

    def __init__(self, secret_keys: list[str], base_url: str, *, enabled: bool = True) -> None:
        #: False in production while the documented development key is in force: anyone
        #: could sign links with it, so none is issued and none opens.
        self.enabled = enabled
        # itsdangerous signs with the LAST key and accepts all: ours are newest first.
        keys = list(reversed(secret_keys))
        self._links = URLSafeSerializer(keys, salt="booking.manage.link")
        self._forms = URLSafeSerializer(keys, salt="booking.manage.form")
        self.base_url = base_url.rstrip("/")

    def token(self, session_id: str) -> str:
        return str(self._links.dumps(session_id))

    def url(self, row: db.Session) -> str | None:
        return f"{self.base_url}/m/{self.token(row.id)}" if self.enabled else None

    def session_id(self, token: str) -> str | None:
        if not self.enabled:
            return None
        try:
            value = self._links.loads(token)
        except BadSignature:
            return None
        return value if isinstance(value, str) else None

    def form_token(self, row: db.Session) -> str:
        return str(self._forms.dumps([row.id, row.version]))

    def form_version(self, token: str, session_id: str) -> int | None:
        """The session version a form was rendered for, or None when it is not ours."""
        try:
            value = self._forms.loads(token)
        except BadSignature:
            return None
        if (
            isinstance(value, list)
            and len(value) == 2
            and value[0] == session_id
            and isinstance(value[1], int)
        ):
            return value[1]
        return None


def is_open(row: db.Session, now: datetime) -> bool:
    return now <= row.end_at + VALID_AFTER_END


def same_site(headers: Any, own_origins: set[str]) -> bool:
    """Whether a POST may come from our own page (browsers send these headers)."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in {"same-origin", "none"}:
        return False
    origin = headers.get("origin")
    return origin is None or origin in own_origins


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def read_form(body: bytes) -> dict[str, str]:
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in fields.items() if v}


# ---------------------------------------------------------------------------------------
# Rendering (plain string templates; every value is escaped)


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


# ---------------------------------------------------------------------------------------
# Actions: the API's use cases, with the form's version as the expected one


@dataclass
class Outcome:
    """What an action did: a redirect on success, or the page again with a message."""

    done: str | None = None
    message: str | None = None
    status: int = 200
    show_times: bool = False


#: Failures of a move the client can fix by picking another time.
TAKEN = (
    domain.SlotTaken,
    domain.NoRoomFree,
    domain.OutsideWorkingHours,
    domain.TherapistUnavailable,
)


async def act(
    booking: usecases.Booking, row: db.Session, action: str, form: dict[str, str], version: int
) -> Outcome:
    try:
        if action == "confirm":
            await usecases.confirm(booking, row.id, expected_version=version)
            return Outcome(done="confirmed")
        if action == "cancel":
            await usecases.cancel(booking, row.id, CLIENT_CANCEL_REASON, expected_version=version)
            return Outcome(done="cancelled")
        start = _parse_start(form.get("start", ""))
        if start is None:
            return Outcome(
                message="Please choose one of the times below.", status=422, show_times=True
            )
        await usecases.reschedule(
            booking, row.id, start, None, any_therapist=True, expected_version=version
        )
        return Outcome(done="moved")
    except usecases.StaleVersion:
        return Outcome(
            message="This page was out of date, so nothing was changed. "
            "Here is your appointment as it is now.",
            status=409,
        )
    except domain.IllegalTransition:
        return Outcome(message="This appointment can no longer be changed here.", status=409)
    except (domain.TooSoon, domain.TooFar):
        return Outcome(
            message="That time can no longer be booked online. Please choose another time.",
            status=422,
            show_times=True,
        )
    except TAKEN:
        return Outcome(
            message="Sorry, that time was just taken. Please choose another time.",
            status=409,
            show_times=True,
        )
    except DomainError:
        return Outcome(
            message="That time is not available. Please choose another time.",
            status=409,
            show_times=True,
        )


def _parse_start(raw: str) -> datetime | None:
    try:
        return as_utc(datetime.fromisoformat(raw))
    except ValueError:
        return None


async def free_times(booking: usecases.Booking, row: db.Session) -> list[domain.Slot]:
    """Free starts of the next two weeks for the same treatment at the same location."""
    now = booking.clock()
    try:
        return await usecases.availability(
            booking,
            service_id=row.treatment_id,
            location_id=row.location_id,
            start=now,
            end=now + timedelta(days=RESCHEDULE_DAYS),
        )
    except DomainError:
        return []  # a retired treatment: nothing to offer, the page says to call
