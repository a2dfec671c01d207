"""The event contract: a CloudEvents 1.0 envelope and one payload model per event type.

An event's ``type`` is its NATS subject. Payloads grow by adding optional fields only;
a breaking change gets a new type (``….v2``).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from shared.timeutil import utcnow

# Streams: one per producing service, plus the dead-letter stream.
BOOKING_STREAM = "BOOKING"
REMINDERS_STREAM = "REMINDERS"
REFERRALS_STREAM = "REFERRALS"
DLQ_STREAM = "DLQ"
STREAM_SUBJECTS: dict[str, str] = {
    BOOKING_STREAM: "booking.>",
    REMINDERS_STREAM: "reminders.>",
    REFERRALS_STREAM: "referrals.>",
    DLQ_STREAM: "dlq.>",
}


def stream_for(subject: str) -> str:
    """The stream that stores ``subject``."""
    prefix = subject.split(".", 1)[0]
    for stream, pattern in STREAM_SUBJECTS.items():
        if pattern.split(".", 1)[0] == prefix:
            return stream
    raise ValueError(f"no stream takes subject {subject!r}")


def dlq_subject(stream: str, consumer: str) -> str:
    """Where a message that ``consumer`` of ``stream`` could not handle is parked."""
    return f"dlq.{stream}.{consumer}"


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

SMS_SENT = "reminders.sms.sent"
SMS_DELIVERED = "reminders.sms.delivered"
SMS_FAILED = "reminders.sms.failed"
REPLY_RECEIVED = "reminders.reply.received"
CONSENT_CHANGED = "reminders.consent.changed"

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


class Payload(BaseModel):
    """Base of every payload: unknown fields from a newer producer are kept, not refused."""

    model_config = ConfigDict(extra="allow")


class ClientRef(Payload):
    id: str
    first_name: str
    phone: str
    sms_consent: bool


class TherapistRef(Payload):
    id: str
    display_name: str


class LocationRef(Payload):
    id: str
    name: str
    timezone: str
    address: str
    phone: str


class ServiceRef(Payload):
    id: str
    name: str
    modality: str
    duration_minutes: int


class SessionEvent(Payload):
    """Data of every ``booking.session.*`` event: enough state to act without asking."""

    session_id: str
    version: int
    status: str
    start: datetime
    end: datetime
    previous_start: datetime | None = None
    reason: str | None = None
    late_cancel: bool | None = None
    client: ClientRef
    therapist: TherapistRef
    location: LocationRef
    service: ServiceRef
    room_id: str


class ClientDetails(Payload):
    id: str
    first_name: str
    last_name: str
    date_of_birth: date | None = None
    phone: str
    email: str | None = None
    sms_consent: bool


class ClientEvent(Payload):
    """Data of ``booking.client.created`` and ``.updated``."""

    client: ClientDetails


class SmsEvent(Payload):
    """Data of ``reminders.sms.sent``, ``.delivered`` and ``.failed``."""

    message_id: str
    session_id: str | None = None
    rule: str | None = None
    provider_sid: str | None = None
    error_code: int | None = None


class ReplyReceived(Payload):
    """A client's text reply, already understood: what they want, not what they wrote."""

    phone: str
    client_id: str | None = None
    session_id: str | None = None
    intent: Literal["confirm", "reschedule", "help", "other"]


class ConsentChanged(Payload):
    phone: str
    sms_consent: bool
    source: str


class PartnerRef(Payload):
    id: str
    discipline: str


class ReferralEvent(Payload):
    referral_id: str
    plan_id: str
    client_id: str
    partner: PartnerRef
    status: str


class PlanEvent(Payload):
    plan_id: str
    client_id: str
    progress: dict[str, Any] = Field(default_factory=dict)


PayloadT = TypeVar("PayloadT")


class CloudEvent(BaseModel, Generic[PayloadT]):
    """CloudEvents 1.0, JSON structured mode. ``id`` doubles as the ``Nats-Msg-Id``."""

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

#: Which payload model each event type carries.
PAYLOAD_TYPES: dict[str, type[BaseModel]] = {
    **{subject: SessionEvent for subject in SESSION_EVENTS},
    CLIENT_CREATED: ClientEvent,
    CLIENT_UPDATED: ClientEvent,
    SMS_SENT: SmsEvent,
    SMS_DELIVERED: SmsEvent,
    SMS_FAILED: SmsEvent,
    REPLY_RECEIVED: ReplyReceived,
    CONSENT_CHANGED: ConsentChanged,
    **{referral_subject(status): ReferralEvent for status in REFERRAL_STATUSES},
    PLAN_CREATED: PlanEvent,
    PLAN_UPDATED: PlanEvent,
    PLAN_COMPLETED: PlanEvent,
}


def make_event(
    event_type: str, source: str, data: BaseModel, subject: str | None = None
) -> CloudEvent[Any]:
    """Wrap ``data`` in an envelope, checking it is the payload the type promises."""
    expected = PAYLOAD_TYPES.get(event_type)
    if expected is None:
        raise ValueError(f"unknown event type {event_type!r}")
    if not isinstance(data, expected):
        raise TypeError(f"{event_type} carries {expected.__name__}, not {type(data).__name__}")
    return AnyEvent(source=source, type=event_type, data=data, subject=subject)


def parse_event(raw: bytes, expected_type: str | None = None) -> CloudEvent[Any]:
    """Parse a JSON envelope and its payload; raises ``ValueError`` naming what is wrong."""
    envelope = _RawEvent.model_validate_json(raw)
    if expected_type is not None and envelope.type != expected_type:
        raise ValueError(
            f"event type {envelope.type!r} arrived where {expected_type!r} was expected"
        )
    model = PAYLOAD_TYPES.get(envelope.type)
    if model is None:
        raise ValueError(f"unknown event type {envelope.type!r}")
    data = model.model_validate(envelope.data)
    # Both parts are validated already: assemble without validating again.
    fields = {
        name: getattr(envelope, name) for name in type(envelope).model_fields if name != "data"
    }
    return AnyEvent.model_construct(**fields, data=data)
