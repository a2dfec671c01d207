"""The outside calendars themselves: CalDAV through the ``caldav`` package, ICS over HTTP.

``caldav`` is blocking: the methods of :class:`CalDavCalendar` are meant to run in a
worker thread (``calendar.context`` gives them their own pool), never on the event loop.
Every failure comes out as :class:`CalendarUnavailable` with a message fit for
``last_error``: no password, no calendar content.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, urlsplit, urlunsplit

from shared.outbound import OutboundPolicy, OutboundRefused

#: An ICS feed bigger than this is refused (a calendar, not a download service).
MAX_ICS_BYTES = 20 * 1024 * 1024


class CalendarUnavailable(Exception):
    """The calendar could not be read or written; the message says why, briefly."""


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def describe(exc: BaseException) -> str:
    """A one-line reason for ``last_error``, in words an admin can act on.

    Matched by class name: ``caldav`` talks through ``requests`` or ``niquests``, ICS
    feeds through ``httpx``, and each names the same failures alike.
    """
    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    status = next((getattr(e, "status", None) for e in chain if getattr(e, "status", None)), None)
    if any("Timeout" in name for name in names):
        return "timeout: the calendar server did not answer in time"
    if names & {"ConnectionError", "ConnectError", "NewConnectionError", "ConnectionRefusedError"}:
        refused = any("refused" in str(e).lower() for e in chain)
        return "cannot connect to the calendar server" + (
            " (connection refused)" if refused else ""
        )
    # caldav (and niquests under it, ~19 MB) is imported by the first CalDavCalendar: a
    # booking with no calendar linked never loads it, and then no error can be caldav's.
    caldav_error = sys.modules.get("caldav.lib.error")
    if caldav_error is not None and isinstance(exc, caldav_error.AuthorizationError):
        return f"the calendar server refused the username or password (HTTP {status or '401/403'})"
    if caldav_error is not None and isinstance(exc, caldav_error.NotFoundError):
        return "nothing at that URL (HTTP 404): give the calendar collection's URL"
    outbound = next((e for e in chain if isinstance(e, OutboundRefused)), None)
    if outbound is not None:
        return f"refused: {outbound}"[:300]
    # Never the exception's text: a server's error carries its response body, and the
    # stored error must not quote what an (internal) server answered.
    return f"{type(exc).__name__}" + (f": HTTP {status}" if status else "")


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None


class CalDavCalendar:
    """One CalDAV calendar collection, addressed by its URL (blocking calls)."""

    def __init__(
        self,
        url: str,
        credentials: Credentials,
        timeout_seconds: float,
        outbound: OutboundPolicy | None = None,
    ) -> None:
        from caldav.davclient import DAVClient

        self.url = url if url.endswith("/") else url + "/"
        kwargs: dict[str, object] = {"timeout": int(max(1, timeout_seconds))}
        if credentials.username is not None:
            kwargs["username"] = credentials.username
            kwargs["password"] = credentials.password or ""
        self._client = DAVClient(url=self.url, **kwargs)  # type: ignore[arg-type]
        # Every request and redirect hop of caldav's session is checked first.
        (outbound or OutboundPolicy()).guard_session(self._client.session)
        self._calendar = self._client.calendar(url=self.url)

    def put(self, resource: bytes) -> str:
        """Create or replace the event; returns its URL (made from its UID, so a second
        put of the same UID replaces). SEQUENCE is stored as given, not bumped."""
        try:
            stored = self._calendar.add_event(resource.decode(), increase_seqno=False)
        except Exception as exc:
            raise CalendarUnavailable(describe(exc)) from exc
        if stored.url is None:
            raise CalendarUnavailable("the server accepted the event but gave it no URL")
        return str(stored.url)

    def href_for(self, uid: str) -> str:
        """Where caldav puts the event with ``uid`` (``@`` spelled ``%40``, ``/`` twice quoted)."""
        return self.url + quote(uid.replace("/", "%2F"), safe="") + ".ics"

    def delete(self, href: str) -> None:
        """Remove the resource at ``href``; one that is already gone is fine."""
        from caldav.calendarobjectresource import Event
        from caldav.lib import error as caldav_error

        try:
            Event(client=self._client, url=href, parent=self._calendar).delete()
        except caldav_error.NotFoundError:
            return
        except Exception as exc:
            raise CalendarUnavailable(describe(exc)) from exc

    def resources(self, start: datetime, end: datetime) -> list[tuple[str, bytes]]:
        """Every event resource overlapping ``[start, end)``: (href, iCalendar text).

        Recurring events come as their master (expanded by the caller), so a series that
        began long ago still shows.
        """
        try:
            found = self._calendar.search(start=start, end=end, event=True, expand=False)
            return [(str(obj.url), _as_bytes(obj.data)) for obj in found]
        except Exception as exc:
            raise CalendarUnavailable(describe(exc)) from exc


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    return str(data or "").encode()


def ics_fetch_url(url: str) -> str:
    """``webcal://`` is how calendar apps spell an HTTPS subscription."""
    parts = urlsplit(url)
    if parts.scheme == "webcal":
        return urlunsplit(("https", *parts[1:]))
    return url


async def fetch_ics(
    url: str,
    credentials: Credentials,
    timeout_seconds: float,
    outbound: OutboundPolicy | None = None,
) -> bytes:
    """GET an ICS feed (following redirects, each hop checked against the outbound policy),
    with basic auth when credentials are set."""
    import httpx  # here: a booking process without ICS links never loads it

    auth = (
        httpx.BasicAuth(credentials.username, credentials.password or "")
        if credentials.username is not None
        else None
    )
    try:
        async with (
            httpx.AsyncClient(
                timeout=timeout_seconds,
                follow_redirects=True,
                auth=auth,
                transport=(outbound or OutboundPolicy()).transport(),
            ) as client,
            client.stream("GET", ics_fetch_url(url)) as response,
        ):
            if response.status_code != 200:
                raise CalendarUnavailable(f"HTTP {response.status_code} from the ICS URL")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body.extend(chunk)
                if len(body) > MAX_ICS_BYTES:
                    raise CalendarUnavailable(f"ICS feed larger than {MAX_ICS_BYTES} bytes")
            return bytes(body)
    except httpx.HTTPError as exc:
        raise CalendarUnavailable(describe(exc)) from exc
