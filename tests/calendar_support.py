"""A real CalDAV server for the calendar tests: Radicale, as its own process.

Radicale runs with ``--auth-type none``: any username and password are accepted (the
client must still send some), and each user owns the collections under ``/<user>/``.
A calendar collection answers a plain GET with the whole calendar as iCalendar, so the
same server also stands in for an ICS subscription URL.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import icalendar
from caldav.calendarobjectresource import Event
from caldav.davclient import DAVClient

from shared.natsd import free_port
from tests.support import eventually

PASSWORD = "radicale-any-password"


@dataclass
class Radicale:
    """One Radicale process; ``stop()`` and ``start()`` again keep its port and its data."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Radicale:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "radicale.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "radicale",
                "--server-hosts",
                f"127.0.0.1:{self.port}",
                "--auth-type",
                "none",
                "--storage-filesystem-folder",
                str(self.directory / "collections"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    async def ready(self, timeout: float = 20.0) -> Radicale:
        """Wait until Radicale accepts connections (fail early if it exited)."""

        async def listening() -> bool:
            if self.process is None or self.process.poll() is not None:
                raise AssertionError(f"radicale exited: {self.log_tail()}")
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        await eventually(listening, timeout=timeout, what="radicale to listen")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "radicale.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # -- calendars, through the caldav package (blocking: call via asyncio.to_thread) --

    def client(self, user: str) -> DAVClient:
        return DAVClient(url=self.url + "/", username=user, password=PASSWORD, timeout=10)

    def make_calendar(self, user: str, name: str) -> str:
        """Create ``/<user>/<name>/`` and return its URL."""
        calendar = self.client(user).principal().make_calendar(name=name, cal_id=name)
        return str(calendar.url)

    def resources(self, calendar_url: str, user: str) -> list[tuple[str, str]]:
        """(href, iCalendar text) of every event in the calendar."""
        calendar = self.client(user).calendar(url=calendar_url)
        return [(str(e.url), str(e.data)) for e in calendar.events()]

    def vevents(self, calendar_url: str, user: str) -> list[icalendar.Event]:
        found = []
        for _href, text in self.resources(calendar_url, user):
            found.extend(icalendar.Calendar.from_ical(text).walk("VEVENT"))
        return found

    def add(self, calendar_url: str, user: str, ics: str) -> str:
        calendar = self.client(user).calendar(url=calendar_url)
        return str(calendar.add_event(ics, increase_seqno=False).url)

    def delete(self, href: str, user: str) -> None:
        client = self.client(user)
        Event(client=client, url=href).delete()


def vcalendar(*vevents: str) -> str:
    """A VCALENDAR around VEVENT bodies (each without BEGIN/END lines)."""
    body = "".join(f"BEGIN:VEVENT\r\n{v.strip()}\r\nEND:VEVENT\r\n" for v in vevents)
    return f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//tests//EN\r\n{body}END:VCALENDAR\r\n"


def by_uid(vevents: list[icalendar.Event]) -> dict[str, list[icalendar.Event]]:
    grouped: dict[str, list[Any]] = {}
    for event in vevents:
        grouped.setdefault(str(event["UID"]), []).append(event)
    return grouped
