"""The payload of every event: one pydantic model per kind, each declaring every field its
producer sends (``extra="forbid"``). ``shared.events`` says which subject carries which.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def _is_none(value: object) -> bool:
    return value is None


def when_known(**kwargs: Any) -> Any:
    """An optional field left out of the JSON while it is ``None``: a field its producer
    sends only in some cases, or one added to a payload after its producer was written
    (the events it sends stay byte for byte what they were)."""
    return Field(default=None, exclude_if=_is_none, **kwargs)


class Payload(BaseModel):
    """Base of every payload: it declares every field its producer sends.

    Every declared field is on the wire (``null`` when unset) except those declared
    with :func:`when_known`; the schema a document shows for what is *sent* marks
    exactly those as optional."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class ClientRef(Payload):
    """The client as a text needs them: who, which phone, may we text, in which language."""

    id: str
    first_name: str
    phone: str
    sms_consent: bool
    #: BCP 47; absent until booking keeps a language per client.
    language: str | None = when_known()


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
    #: The client's own signed page for this session.
    manage_url: str | None = when_known()


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


class SlotLocationRef(Payload):
    id: str
    name: str
    timezone: str
    phone: str


class WaitlistSlot(Payload):
    start: datetime
    end: datetime
    therapist_id: str
    location: SlotLocationRef


class WaitlistEvent(Payload):
    """Data of ``booking.waitlist.*``: an offer of a freed slot to one waitlist entry."""

    offer_id: str
    entry_id: str
    client: ClientRef
    slot: WaitlistSlot
    expires_at: datetime


class RoomDetails(Payload):
    id: str
    location_id: str
    name: str
    active: bool | None = None


class LocationEvent(Payload):
    """Data of ``booking.location.updated``: the location as the API shows it, no ICS token."""

    id: str
    name: str
    timezone: str
    address: str
    phone: str
    min_notice_minutes: int | None = None
    horizon_days: int | None = None
    late_cancel_hours: int | None = None
    slot_step_minutes: int | None = None
    rooms: list[RoomDetails] = Field(default_factory=list)


class WorkingHoursDetails(Payload):
    location_id: str
    weekday: int = Field(ge=0, le=6, description="0 = Monday")
    start: str = Field(examples=["09:00"])
    end: str = Field(examples=["17:00"])


class TherapistEvent(Payload):
    """Data of ``booking.therapist.updated``: the therapist as the API shows it, no ICS token."""

    id: str
    name: str
    modalities: list[str]
    working_hours: list[WorkingHoursDetails] = Field(default_factory=list)
    active: bool | None = None


class ApiKeyEvent(Payload):
    """Data of ``booking.apikey.issued`` and ``.revoked``: the key's hash, never the key."""

    id: str
    role: Literal["admin", "front_desk"]
    location_ids: list[str] = Field(default_factory=list)
    sha256: str = Field(description="hex SHA-256 of the key")
    revoked_at: datetime | None = None


class SmsEvent(Payload):
    """Data of ``reminders.sms.sent``, ``.delivered`` and ``.failed``."""

    message_id: str
    session_id: str | None = None
    rule: str | None = None
    provider_sid: str | None = None
    error_code: int | None = None


ReplyIntent = Literal["confirm", "reschedule", "help", "other", "claim", "checkin"]


class ReplyReceived(Payload):
    """A client's text reply, already understood: what they want, not what they wrote."""

    phone: str
    client_id: str | None = None
    session_id: str | None = None
    intent: ReplyIntent
    #: The waitlist offer a ``claim`` takes.
    offer_id: str | None = when_known()


class SmsDue(Payload):
    """Data of ``reminders.due``: a claimed ledger row to send now, by whichever reminders
    replica takes it from the work queue (the row holds the phone and the body)."""

    message_id: str
    #: An earlier attempt may have reached the provider: look before sending.
    reconcile: bool = False


class ConsentChanged(Payload):
    """A phone's SMS consent changed (STOP, START, the front desk)."""

    phone: str
    sms_consent: bool
    source: str


class OutcomeRecorded(Payload):
    """A client's answer to a check-in: how they feel, 0 to 10."""

    client_id: str
    session_id: str
    score: int = Field(ge=0, le=10)
    answered_at: datetime


class PartnerRef(Payload):
    id: str
    discipline: str


class ReferralEvent(Payload):
    """Data of ``referrals.referral.*``: the referral's state, and its FHIR Task's."""

    referral_id: str
    plan_id: str
    client_id: str
    partner: PartnerRef
    status: str
    task_status: str | None = None
    business_status: str | None = None
    urgency: str | None = None
    version: int | None = None
    #: Why it was declined, cancelled, expired or failed.
    status_reason: str | None = when_known()
    first_visit_at: datetime | None = when_known()
    #: Until when the partner may answer (while an answer is awaited).
    respond_by: datetime | None = when_known()
    #: The client as referrals knows them (absent while it does not).
    client: ClientRef | None = when_known()


class ComponentProgress(Payload):
    discipline: str
    sessions: int
    per_week: int
    completed: int
    no_shows: int
    done: bool
    partner_id: str | None = None


class PlanProgress(Payload):
    components: list[ComponentProgress] = Field(default_factory=list)
    components_done: int = 0
    components_total: int = 0
    completed: bool = False


class PlanEvent(Payload):
    """Data of ``referrals.plan.*``: a care plan and how far each discipline has come."""

    plan_id: str
    client_id: str
    progress: PlanProgress = Field(default_factory=PlanProgress)
    status: str | None = None
    version: int | None = None
