"""The HTTP API's request and response bodies: what the outside sees of booking."""

from __future__ import annotations

import re
from datetime import date, datetime, time
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator, model_validator

from shared.timeutil import as_utc, zone
from shared.validation import Instant, Name

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")

#: A BCP 47 language tag, simply checked: ``en``, ``es``, ``es-MX``, ``zh-Hant-TW``.
LANGUAGE_PATTERN = r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$"
Language = Annotated[
    str,
    Field(
        pattern=LANGUAGE_PATTERN,
        max_length=35,
        description="BCP 47 tag of the language the client's texts are written in",
        examples=["en", "es", "es-MX"],
    ),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocationIn(Strict):
    name: Name = Field(min_length=1, max_length=200)
    timezone: str = Field(description="IANA zone, e.g. America/New_York")
    address: str = Field(min_length=1, max_length=500)
    phone: str
    min_notice_minutes: int = Field(default=60, ge=0, le=60 * 24 * 14)
    horizon_days: int = Field(default=90, ge=1, le=730)
    late_cancel_hours: int = Field(default=24, ge=0, le=24 * 14)
    slot_step_minutes: int = Field(default=15, ge=5, le=120)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        zone(value)
        return value


class RoomIn(Strict):
    name: Name = Field(min_length=1, max_length=200)


class RoomOut(BaseModel):
    id: str
    location_id: str
    name: str
    active: bool = True


class LocationOut(BaseModel):
    id: str
    name: str
    timezone: str
    address: str
    phone: str
    min_notice_minutes: int
    horizon_days: int
    late_cancel_hours: int
    slot_step_minutes: int
    rooms: list[RoomOut]
    ics_url: str


class TreatmentIn(Strict):
    name: Name = Field(min_length=1, max_length=200)
    modality: str = Field(min_length=1, max_length=64, examples=["medical_massage"])
    duration_minutes: int = Field(ge=5, le=480)
    buffer_minutes: int = Field(default=0, ge=0, le=120)


class TreatmentOut(TreatmentIn):
    id: str
    active: bool = True


class WorkingHoursIn(Strict):
    location_id: str
    weekday: int = Field(ge=0, le=6, description="0 = Monday")
    start: str = Field(examples=["09:00"])
    end: str = Field(examples=["17:00"])

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError("must be a 24-hour time HH:MM, e.g. 09:00")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> WorkingHoursIn:
        if time.fromisoformat(self.start) >= time.fromisoformat(self.end):
            raise ValueError("end must be after start")
        return self


class TherapistIn(Strict):
    name: Name = Field(min_length=1, max_length=200)
    modalities: list[str] = Field(min_length=1)
    working_hours: list[WorkingHoursIn] = Field(default_factory=list)


class TherapistOut(BaseModel):
    id: str
    name: str
    modalities: list[str]
    working_hours: list[WorkingHoursIn] = Field(description="the week in force today")
    active: bool = True
    ics_url: str | None = Field(
        default=None, description="the therapist's feed; admins only (it holds its token)"
    )


class TimeOffIn(Strict):
    start: Instant
    end: Instant
    reason: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _ordered(self) -> TimeOffIn:
        self.start, self.end = as_utc(self.start), as_utc(self.end)
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class ConflictOut(BaseModel):
    """A booked session a change now overlaps; it stays booked, the front desk decides."""

    session_id: str
    start: datetime
    end: datetime
    status: str
    therapist_id: str
    location_id: str


class TimeOffOut(BaseModel):
    id: str
    therapist_id: str
    start: datetime
    end: datetime
    reason: str | None
    #: Sessions already booked inside the time off: the front desk should move them.
    conflicts: list[ConflictOut] = Field(default_factory=list)
    #: The ids of ``conflicts`` (the first answer's field, kept for its readers).
    conflicting_session_ids: list[str] = Field(default_factory=list)


class ClientIn(Strict):
    first_name: Name = Field(min_length=1, max_length=100)
    last_name: Name = Field(min_length=1, max_length=100)
    phone: str = Field(description="E.164, or national in the clinic's default region")
    email: EmailStr | None = None
    date_of_birth: date | None = None
    sms_consent: bool = False
    sms_consent_source: str = Field(default="front_desk", max_length=100)
    home_location_id: str | None = Field(
        default=None,
        max_length=36,
        description="the client's location; a front-desk key with one location defaults to it",
    )
    language: Language = "en"


class ClientPatch(Strict):
    first_name: Name | None = Field(default=None, min_length=1, max_length=100)
    last_name: Name | None = Field(default=None, min_length=1, max_length=100)
    phone: str | None = None
    email: EmailStr | None = None
    date_of_birth: date | None = None
    sms_consent: bool | None = None
    sms_consent_source: str = Field(default="front_desk", max_length=100)
    home_location_id: str | None = Field(default=None, max_length=36)
    language: Language | None = None


class ClientOut(BaseModel):
    id: str
    first_name: str
    last_name: str
    phone: str
    email: str | None
    date_of_birth: date | None
    sms_consent: bool
    sms_consent_at: datetime | None
    sms_consent_source: str | None
    home_location_id: str | None = None
    language: str = "en"


class SlotOut(BaseModel):
    start: datetime
    end: datetime
    therapist_id: str
    room_id: str


class SessionIn(Strict):
    client_id: str
    service_id: str
    location_id: str
    start: Instant
    therapist_id: str | None = None


class RescheduleIn(Strict):
    start: Instant
    therapist_id: str | None = None
    location_id: str | None = Field(
        default=None, description="move to another location (any therapist there, unless named)"
    )


class CancelIn(Strict):
    reason: str = Field(min_length=1, max_length=500)


SessionStatus = Literal["booked", "confirmed", "checked_in", "completed", "cancelled", "no_show"]


class SessionOut(BaseModel):
    id: str
    status: SessionStatus
    version: int
    client_id: str
    service_id: str
    location_id: str
    therapist_id: str
    room_id: str
    start: datetime
    end: datetime
    late_cancel: bool
    cancel_reason: str | None
    created_at: datetime
    updated_at: datetime
    manage_url: str | None = Field(
        default=None, description="the client's own page for this session (signed)"
    )


class ApiKeyIn(Strict):
    name: Name = Field(min_length=1, max_length=200)
    role: Literal["admin", "front_desk"]
    location_ids: list[str] = Field(default_factory=list)


class ApiKeyView(BaseModel):
    id: str
    name: str
    role: str
    location_ids: list[str]
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyOut(ApiKeyView):
    api_key: str = Field(description="shown this once; only its hash is stored")


# -- calendar links (services.booking.calendar) ----------------------------------------


class CalendarLinkIn(Strict):
    owner_type: Literal["therapist", "location"]
    owner_id: str
    direction: Literal["push", "pull"] = Field(
        description="push: sessions are written there; pull: its busy time blocks availability"
    )
    kind: Literal["caldav", "ics"] = Field(description="ics: a read-only iCalendar URL (pull)")
    url: str = Field(
        min_length=1,
        max_length=2000,
        description="the calendar collection's URL (CalDAV) or the feed's URL (ICS)",
    )
    username: str | None = Field(default=None, min_length=1, max_length=200)
    password: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="stored encrypted, never returned",
    )
    timezone: str | None = Field(
        default=None,
        description="IANA zone for all-day and floating times of a pulled calendar; "
        "defaults to the owner's location",
    )

    @field_validator("url")
    @classmethod
    def _calendar_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in {"http", "https", "webcal"} or not parts.hostname:
            raise ValueError("must be an http(s) URL, e.g. https://dav.example.com/cal/ana/")
        if parts.username or parts.password:
            raise ValueError("put the credentials in username and password, not in the URL")
        return value.strip()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            zone(value)
        return value

    @model_validator(mode="after")
    def _caldav_is_http(self) -> CalendarLinkIn:
        if self.kind == "caldav" and self.url.startswith("webcal:"):
            raise ValueError("url: webcal:// is for ICS subscriptions; CalDAV needs http(s)")
        return self


class CalendarLinkOut(BaseModel):
    id: str
    owner_type: str
    owner_id: str
    direction: str
    kind: str
    url: str
    username: str | None
    has_password: bool = Field(description="the password itself is never returned")
    timezone: str
    status: Literal["pending", "ok", "retrying", "failing"] = Field(
        description="failing: failed calendar_failure_threshold times in a row"
    )
    last_synced_at: datetime | None
    last_error: str | None = Field(description="the most recent error, kept after recovery")
    last_error_at: datetime | None
    consecutive_failures: int
    pending_pushes: int | None = Field(description="push links: sessions not yet written")
    busy_spans: int | None = Field(description="pull links: busy spans read last time")
    created_at: datetime
