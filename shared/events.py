"""The event contract as code: streams, subjects, the payload model each subject carries
(the models are in ``shared.payloads``), the CloudEvents envelope, and the durable
subscriptions each service runs. ``shared.asyncapi`` turns this module into each
service's ``GET /asyncapi.json``; nothing about an event is declared anywhere else.

An event's ``type`` is its NATS subject; a subject's first segment names the service that
publishes it. A payload model declares every field its producer sends (``extra="forbid"``:
an undeclared field fails where the event is built, in the producer's tests, not in a
consumer). Payloads grow by adding optional fields only; a breaking change gets a new
type (``….v2``). Consumers read tolerantly: :func:`parse_event` ignores fields a newer
producer added, so producers can be deployed before their consumers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

# Every payload model is also ``events.<Model>``: the contract's one name for it.
from shared.payloads import (
    ApiKeyEvent,
    ClientDetails,  # noqa: F401
    ClientEvent,
    ClientRef,  # noqa: F401
    ComponentProgress,  # noqa: F401
    ConsentChanged,
    LocationEvent,
    LocationRef,  # noqa: F401
    OutcomeRecorded,
    PartnerRef,  # noqa: F401
    Payload,
    PlanEvent,
    PlanProgress,  # noqa: F401
    ReferralEvent,
    ReplyIntent,  # noqa: F401
    ReplyReceived,
    RoomDetails,  # noqa: F401
    ServiceRef,  # noqa: F401
    SessionEvent,
    SlotLocationRef,  # noqa: F401
    SmsDue,
    SmsEvent,
    TherapistEvent,
    TherapistRef,  # noqa: F401
    WaitlistEvent,
    WaitlistSlot,  # noqa: F401
    WorkingHoursDetails,  # noqa: F401
)
from shared.timeutil import utcnow

# Streams: one per producing service, plus the dead-letter stream.
BOOKING_STREAM = "BOOKING"
REMINDERS_STREAM = "REMINDERS"
REFERRALS_STREAM = "REFERRALS"
DLQ_STREAM = "DLQ"
#: A work queue, not a log: each message is removed once a consumer acknowledges it.
REMINDERS_DUE_STREAM = "REMINDERS_DUE"
#: The subjects each stream stores. REMINDERS names its families one by one, so that
#: ``reminders.due`` can live in its own work-queue stream (subjects may not overlap).
STREAM_SUBJECTS: dict[str, tuple[str, ...]] = {
    BOOKING_STREAM: ("booking.>",),
    REMINDERS_STREAM: (
        "reminders.sms.>",
        "reminders.reply.>",
        "reminders.consent.>",
        "reminders.outcome.>",
    ),
    REMINDERS_DUE_STREAM: ("reminders.due",),
    REFERRALS_STREAM: ("referrals.>",),
    DLQ_STREAM: ("dlq.>",),
}
#: Streams whose messages go once acknowledged (JetStream's work-queue retention).
WORK_QUEUE_STREAMS = frozenset({REMINDERS_DUE_STREAM})


def stream_for(subject: str) -> str:
    """The stream that stores ``subject``."""
    for stream, patterns in STREAM_SUBJECTS.items():
        if any(subject_matches(pattern, subject) for pattern in patterns):
            return stream
    raise ValueError(f"no stream takes subject {subject!r}")


def dlq_subject(stream: str, consumer: str) -> str:
    """Where a message that ``consumer`` of ``stream`` could not handle is parked."""
    return f"dlq.{stream}.{consumer}"


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcards: ``*`` is one token, a final ``>`` one or more."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for i, token in enumerate(wanted):
        if token == ">":  # noqa: S105 (a NATS wildcard, not a password)
            return len(tokens) > i
        if i >= len(tokens) or token not in ("*", tokens[i]):
            return False
    return len(tokens) == len(wanted)


# -- subjects ------------------------------------------------------------------------------

SESSION_BOOKED = "booking.session.booked"
SESSION_RESCHEDULED = "booking.session.rescheduled"
SESSION_CANCELLED = "booking.session.cancelled"
SESSION_CONFIRMED = "booking.session.confirmed"
SESSION_CHECKED_IN = "booking.session.checked_in"
SESSION_COMPLETED = "booking.session.completed"
SESSION_NO_SHOW = "booking.session.no_show"
SESSION_EVENTS = (
    SESSION_BOOKED,
    SESSION_RESCHEDULED,
    SESSION_CANCELLED,
    SESSION_CONFIRMED,
    SESSION_CHECKED_IN,
    SESSION_COMPLETED,
    SESSION_NO_SHOW,
)
CLIENT_CREATED = "booking.client.created"
CLIENT_UPDATED = "booking.client.updated"
WAITLIST_OFFERED = "booking.waitlist.offered"
WAITLIST_FILLED = "booking.waitlist.filled"
WAITLIST_TAKEN = "booking.waitlist.taken"
WAITLIST_EXPIRED = "booking.waitlist.expired"
WAITLIST_EVENTS = (WAITLIST_OFFERED, WAITLIST_FILLED, WAITLIST_TAKEN, WAITLIST_EXPIRED)
LOCATION_UPDATED = "booking.location.updated"
THERAPIST_UPDATED = "booking.therapist.updated"
APIKEY_ISSUED = "booking.apikey.issued"
APIKEY_REVOKED = "booking.apikey.revoked"

SMS_SENT = "reminders.sms.sent"
SMS_DELIVERED = "reminders.sms.delivered"
SMS_FAILED = "reminders.sms.failed"
REPLY_RECEIVED = "reminders.reply.received"
CONSENT_CHANGED = "reminders.consent.changed"
OUTCOME_RECORDED = "reminders.outcome.recorded"
#: Reminders to itself: a claimed text to send now (the senders' work queue).
SMS_DUE = "reminders.due"

REFERRAL_STATUSES = (
    "created",
    "sent",
    "received",
    "accepted",
    "declined",
    "scheduled",
    "completed",
    "cancelled",
    "expired",
    "failed",
)
PLAN_CREATED = "referrals.plan.created"
PLAN_UPDATED = "referrals.plan.updated"
PLAN_COMPLETED = "referrals.plan.completed"


def referral_subject(status: str) -> str:
    """``referrals.referral.<status>`` for one of :data:`REFERRAL_STATUSES`."""
    if status not in REFERRAL_STATUSES:
        raise ValueError(f"unknown referral status {status!r}")
    return f"referrals.referral.{status}"


REFERRAL_EVENTS = tuple(referral_subject(status) for status in REFERRAL_STATUSES)


#: Which payload model each event type carries: every subject there is.
PAYLOAD_TYPES: dict[str, type[Payload]] = {
    **{subject: SessionEvent for subject in SESSION_EVENTS},
    CLIENT_CREATED: ClientEvent,
    CLIENT_UPDATED: ClientEvent,
    **{subject: WaitlistEvent for subject in WAITLIST_EVENTS},
    LOCATION_UPDATED: LocationEvent,
    THERAPIST_UPDATED: TherapistEvent,
    APIKEY_ISSUED: ApiKeyEvent,
    APIKEY_REVOKED: ApiKeyEvent,
    SMS_SENT: SmsEvent,
    SMS_DELIVERED: SmsEvent,
    SMS_FAILED: SmsEvent,
    REPLY_RECEIVED: ReplyReceived,
    CONSENT_CHANGED: ConsentChanged,
    OUTCOME_RECORDED: OutcomeRecorded,
    SMS_DUE: SmsDue,
    **{subject: ReferralEvent for subject in REFERRAL_EVENTS},
    PLAN_CREATED: PlanEvent,
    PLAN_UPDATED: PlanEvent,
    PLAN_COMPLETED: PlanEvent,
}


def publications(service: str) -> dict[str, type[Payload]]:
    """What ``service`` publishes: the subjects whose first segment is its name."""
    return {s: model for s, model in PAYLOAD_TYPES.items() if s.split(".", 1)[0] == service}


# -- subscriptions -------------------------------------------------------------------------

P = TypeVar("P", bound=Payload)


@dataclass(frozen=True)
class Subscription(Generic[P]):
    """A durable pull consumer ``<service>-<purpose>`` of ``stream`` filtered by ``subject``;
    every subject it matches carries ``payload`` (checked when declared)."""

    service: str
    purpose: str
    stream: str
    subject: str
    payload: type[P]
    summary: str

    def __post_init__(self) -> None:
        subjects = self.subjects
        if not subjects:
            raise ValueError(f"{self.durable}: {self.subject!r} matches no subject")
        for subject in subjects:
            if stream_for(subject) != self.stream:
                raise ValueError(f"{self.durable}: {subject} is not in stream {self.stream}")
            if PAYLOAD_TYPES[subject] is not self.payload:
                raise ValueError(f"{self.durable}: {subject} does not carry {self.payload}")

    @property
    def durable(self) -> str:
        return f"{self.service}-{self.purpose}"

    @property
    def subjects(self) -> tuple[str, ...]:
        """The declared subjects this subscription receives."""
        return tuple(s for s in PAYLOAD_TYPES if subject_matches(self.subject, s))


BOOKING_REPLIES = Subscription(
    "booking",
    "replies",
    REMINDERS_STREAM,
    REPLY_RECEIVED,
    ReplyReceived,
    "A client's reply confirms a session or claims a waitlist offer.",
)
BOOKING_CONSENT = Subscription(
    "booking",
    "consent",
    REMINDERS_STREAM,
    CONSENT_CHANGED,
    ConsentChanged,
    "A phone's STOP or START updates the consent of its clients.",
)
BOOKING_CALDAV = Subscription(
    "booking",
    "caldav",
    BOOKING_STREAM,
    "booking.session.*",
    SessionEvent,
    "Booking's own session events, written into linked CalDAV calendars.",
)
REMINDERS_SESSIONS = Subscription(
    "reminders",
    "sessions",
    BOOKING_STREAM,
    "booking.session.>",
    SessionEvent,
    "Sessions to plan texts for (confirmation, reminders, follow-ups, check-ins).",
)
REMINDERS_CLIENTS = Subscription(
    "reminders",
    "clients",
    BOOKING_STREAM,
    "booking.client.>",
    ClientEvent,
    "The client's phone and consent as booking knows them.",
)
REMINDERS_LOCATIONS = Subscription(
    "reminders",
    "locations",
    BOOKING_STREAM,
    "booking.location.>",
    LocationEvent,
    "A location's name, phone and timezone, for the texts still to send.",
)
REMINDERS_WAITLIST = Subscription(
    "reminders",
    "waitlist",
    BOOKING_STREAM,
    "booking.waitlist.>",
    WaitlistEvent,
    "Waitlist offers to text, and offers no longer open.",
)
REMINDERS_APIKEYS = Subscription(
    "reminders",
    "apikeys",
    BOOKING_STREAM,
    "booking.apikey.>",
    ApiKeyEvent,
    "API keys issued or revoked at booking, honoured here.",
)
REMINDERS_REFERRALS = Subscription(
    "reminders",
    "referrals",
    REFERRALS_STREAM,
    "referrals.referral.>",
    ReferralEvent,
    "An accepted or scheduled referral becomes a text to its client.",
)
REFERRALS_CLIENTS = Subscription(
    "referrals",
    "clients",
    BOOKING_STREAM,
    "booking.client.*",
    ClientEvent,
    "The client's details a referral shares with its partner.",
)
REFERRALS_SESSIONS = Subscription(
    "referrals",
    "sessions",
    BOOKING_STREAM,
    "booking.session.*",
    SessionEvent,
    "Completed and missed sessions move care plans on.",
)
REFERRALS_APIKEYS = Subscription(
    "referrals",
    "apikeys",
    BOOKING_STREAM,
    "booking.apikey.>",
    ApiKeyEvent,
    "API keys issued or revoked at booking, honoured here.",
)
REFERRALS_OUTCOMES = Subscription(
    "referrals",
    "outcomes",
    REMINDERS_STREAM,
    "reminders.outcome.>",
    OutcomeRecorded,
    "Pain scores from check-in replies, kept as the plan's outcomes.",
)
REMINDERS_SENDERS = Subscription(
    "reminders",
    "senders",
    REMINDERS_DUE_STREAM,
    SMS_DUE,
    SmsDue,
    "Texts due now: every reminders replica takes from this work queue and sends, once.",
)

#: Every durable subscription of every service.
SUBSCRIPTIONS: tuple[Subscription[Any], ...] = (
    BOOKING_REPLIES,
    BOOKING_CONSENT,
    BOOKING_CALDAV,
    REMINDERS_SESSIONS,
    REMINDERS_CLIENTS,
    REMINDERS_LOCATIONS,
    REMINDERS_WAITLIST,
    REMINDERS_APIKEYS,
    REMINDERS_REFERRALS,
    REMINDERS_SENDERS,
    REFERRALS_CLIENTS,
    REFERRALS_SESSIONS,
    REFERRALS_APIKEYS,
    REFERRALS_OUTCOMES,
)


def subscriptions(service: str) -> tuple[Subscription[Any], ...]:
    """The durable subscriptions ``service`` runs."""
    return tuple(s for s in SUBSCRIPTIONS if s.service == service)


# -- the envelope --------------------------------------------------------------------------

PayloadT = TypeVar("PayloadT")


class CloudEvent(BaseModel, Generic[PayloadT]):
    """CloudEvents 1.0, JSON structured mode. ``id`` doubles as the ``Nats-Msg-Id``."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    source: str
    type: str
    time: datetime = Field(default_factory=utcnow)
    datacontenttype: Literal["application/json"] = "application/json"
    subject: str | None = None
    data: PayloadT


#: Parametrized once: ``CloudEvent[...]`` builds a new class on every subscript.
AnyEvent = CloudEvent[Any]
_RawEvent = CloudEvent[dict[str, Any]]


def make_event(event_type: str, source: str, data: P, subject: str | None = None) -> CloudEvent[P]:
    """Wrap ``data`` in an envelope, checking it is the payload the type promises."""
    expected = PAYLOAD_TYPES.get(event_type)
    if expected is None:
        raise ValueError(f"unknown event type {event_type!r}")
    if not isinstance(data, expected):
        raise TypeError(f"{event_type} carries {expected.__name__}, not {type(data).__name__}")
    return cast(
        "CloudEvent[P]", AnyEvent(source=source, type=event_type, data=data, subject=subject)
    )


def parse_event(raw: bytes, expected_type: str | None = None) -> CloudEvent[Any]:
    """Parse a JSON envelope and its payload; raises ``ValueError`` naming what is wrong.

    Fields the payload model does not know are dropped, not refused: they come from a
    newer producer (payloads only grow), and this consumer does not need them yet."""
    envelope = _RawEvent.model_validate_json(raw)
    if expected_type is not None and envelope.type != expected_type:
        raise ValueError(
            f"event type {envelope.type!r} arrived where {expected_type!r} was expected"
        )
    model = PAYLOAD_TYPES.get(envelope.type)
    if model is None:
        raise ValueError(f"unknown event type {envelope.type!r}")
    data = model.model_validate(envelope.data, extra="ignore")
    # Both parts are validated already: assemble without validating again.
    fields = {
        name: getattr(envelope, name) for name in type(envelope).model_fields if name != "data"
    }
    return AnyEvent.model_construct(**fields, data=data)
