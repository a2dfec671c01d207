"""In-memory state of the sandbox: messages, opt-outs, and a log of create requests.

Everything runs on the server's single event loop, so plain containers are enough.
``generation`` changes on every reset, which tells background deliveries started
before the reset to stop instead of touching the new state.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime
from typing import Any

API_VERSION = "2010-04-01"
E164 = re.compile(r"^\+[1-9]\d{6,14}$")

#: Statuses after which nothing changes any more.
FINAL_STATUSES = frozenset({"delivered", "undelivered", "failed", "received", "canceled", "read"})

STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
START_WORDS = frozenset({"START", "UNSTOP", "YES"})
HELP_WORDS = frozenset({"HELP", "INFO"})

# GSM 03.38: characters that fit a 7-bit SMS; the extension ones take two septets.
_GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENDED = set("^{}\\[~]|€\f")


def new_sid(prefix: str = "SM") -> str:
    return prefix + uuid.uuid4().hex


def rfc2822(moment: datetime | None) -> str | None:
    """Twilio's date format, e.g. ``Thu, 24 Aug 2023 05:01:45 +0000``."""
    return format_datetime(moment) if moment else None


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def num_segments(body: str) -> int:
    """How many SMS parts a body takes (GSM-7: 160/153 per part, UCS-2: 70/67)."""
    if not body:
        return 1
    if all(ch in _GSM_BASIC or ch in _GSM_EXTENDED for ch in body):
        septets = sum(2 if ch in _GSM_EXTENDED else 1 for ch in body)
        return 1 if septets <= 160 else math.ceil(septets / 153)
    units = len(body.encode("utf-16-le")) // 2
    return 1 if units <= 70 else math.ceil(units / 67)


def keyword(body: str) -> str | None:
    """'stop', 'start' or 'help' when the body is a single opt-out/in/help keyword."""
    word = body.strip().upper()
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    return None


@dataclass
class Message:
    """One message, inbound or outbound, as Twilio keeps it."""

    sid: str
    account_sid: str
    direction: str
    to: str
    from_: str | None
    body: str
    status: str
    messaging_service_sid: str | None = None
    status_callback: str | None = None
    send_at: datetime | None = None
    date_created: datetime = field(default_factory=now)
    date_updated: datetime = field(default_factory=now)
    date_sent: datetime | None = None
    error_code: int | None = None
    error_message: str | None = None
    price: str | None = None
    #: Wall-clock time the request that made this message arrived (epoch seconds).
    received_at: float = field(default_factory=time.time)
    #: (status, epoch seconds) for every status the message went through.
    history: list[tuple[str, float]] = field(default_factory=list)
    #: Outcome of each status callback: status, HTTP status (None if unreachable), attempts.
    callbacks: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.history.append((self.status, self.received_at))

    @property
    def phone(self) -> str:
        """The party that is not the clinic: whose thread this message belongs to."""
        return (self.from_ or "") if self.direction == "inbound" else self.to

    def set_status(self, status: str) -> None:
        self.status = status
        self.date_updated = now()
        self.history.append((status, time.time()))

    def uri(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}.json"

    def resource(self) -> dict[str, Any]:
        """The message in the shape of ``api.v2010.account.message``."""
        base = self.uri().removesuffix(".json")
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": rfc2822(self.date_created),
            "date_sent": rfc2822(self.date_sent),
            "date_updated": rfc2822(self.date_updated),
            "direction": self.direction,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": "0",
            "num_segments": "0" if self.status == "accepted" else str(num_segments(self.body)),
            "price": self.price,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {
                "media": f"{base}/Media.json",
                "feedback": f"{base}/Feedback.json",
            },
            "to": self.to,
            "uri": self.uri(),
        }

    def debug_view(self) -> dict[str, Any]:
        """The resource plus sandbox bookkeeping, for ``/_sandbox/messages``."""
        return {
            **self.resource(),
            "received_at": self.received_at,
            "status_history": [{"status": s, "at": t} for s, t in self.history],
            "status_callback": self.status_callback,
            "callbacks": self.callbacks,
        }


@dataclass
class DateFilter:
    """Twilio's ``DateSent``, ``DateSent<`` (on or before) and ``DateSent>`` (on or after)."""

    on: date | None = None
    before: datetime | date | None = None
    after: datetime | date | None = None

    def accepts(self, sent: datetime | None) -> bool:
        if not (self.on or self.before or self.after):
            return True
        if sent is None:
            return False
        if self.on and sent.date() != self.on:
            return False
        if self.before and not _compare(sent, self.before, le=True):
            return False
        return not (self.after and not _compare(sent, self.after, le=False))


def _compare(sent: datetime, bound: datetime | date, *, le: bool) -> bool:
    if isinstance(bound, datetime):
        return sent <= bound if le else sent >= bound
    day = sent.date()
    return day <= bound if le else day >= bound


def parse_date_param(value: str) -> datetime | date:
    """A date (``2024-05-01``) or an ISO 8601 date-time as the twilio client sends it."""
    if len(value) == 10:
        return date.fromisoformat(value)
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Store:
    """All the sandbox remembers; ``reset`` forgets it."""

    def __init__(self) -> None:
        self.generation = 0
        self.messages: dict[str, Message] = {}
        self.opted_out: set[str] = set()
        self.requests: list[dict[str, Any]] = []

    def reset(self) -> None:
        self.generation += 1
        self.messages.clear()
        self.opted_out.clear()
        self.requests.clear()

    def add(self, message: Message) -> Message:
        self.messages[message.sid] = message
        return message

    def get(self, sid: str) -> Message | None:
        return self.messages.get(sid)

    def query(self, *, to: str | None, from_: str | None, dates: DateFilter) -> list[Message]:
        """Matching messages, newest first as Twilio lists them."""
        found = [
            m
            for m in self.messages.values()
            if (to is None or m.to == to)
            and (from_ is None or m.from_ == from_)
            and dates.accepts(m.date_sent)
        ]
        return sorted(found, key=lambda m: m.received_at, reverse=True)

    def log_request(self, entry: dict[str, Any]) -> None:
        self.requests.append(entry)

    def threads(self) -> list[dict[str, Any]]:
        """Messages grouped by phone, oldest first; phones with recent activity first."""
        by_phone: dict[str, list[Message]] = {}
        for message in self.messages.values():
            by_phone.setdefault(message.phone, []).append(message)
        threads: list[dict[str, Any]] = []
        for phone, messages in by_phone.items():
            messages.sort(key=lambda m: m.received_at)
            threads.append(
                {
                    "phone": phone,
                    "opted_out": phone in self.opted_out,
                    "last_at": messages[-1].received_at,
                    "messages": [_thread_item(m) for m in messages],
                }
            )
        for phone in self.opted_out - by_phone.keys():
            threads.append({"phone": phone, "opted_out": True, "last_at": 0, "messages": []})
        threads.sort(key=lambda t: t["last_at"], reverse=True)
        return threads


def _thread_item(message: Message) -> dict[str, Any]:
    return {
        "sid": message.sid,
        "direction": message.direction,
        "from": message.from_,
        "to": message.to,
        "body": message.body,
        "status": message.status,
        "error_code": message.error_code,
        "error_message": message.error_message,
        "at": message.received_at,
    }
