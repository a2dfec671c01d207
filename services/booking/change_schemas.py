"""Bodies of the routes that change the clinic after set-up (``api.changes``): PATCH of
locations, rooms, services and therapists, versions of working hours, time off corrected,
closures. The events these changes send are declared in ``shared.payloads``."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field, field_validator, model_validator

from services.booking.schemas import ConflictOut, Strict, WorkingHoursIn
from shared.timeutil import as_utc, zone
from shared.validation import Instant, Name


class LocationPatch(Strict):
    name: Name | None = Field(default=None, min_length=1, max_length=200)
    timezone: str | None = Field(
        default=None, description="IANA zone; refused (409) while the location has future sessions"
    )
    address: str | None = Field(default=None, min_length=1, max_length=500)
    phone: str | None = None
    min_notice_minutes: int | None = Field(default=None, ge=0, le=60 * 24 * 14)
    horizon_days: int | None = Field(default=None, ge=1, le=730)
    late_cancel_hours: int | None = Field(default=None, ge=0, le=24 * 14)
    slot_step_minutes: int | None = Field(default=None, ge=5, le=120)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            zone(value)
        return value


class RoomPatch(Strict):
    name: Name | None = Field(default=None, min_length=1, max_length=200)
    active: bool | None = None


class ServicePatch(Strict):
    name: Name | None = Field(default=None, min_length=1, max_length=200)
    duration_minutes: int | None = Field(default=None, ge=5, le=480)
    buffer_minutes: int | None = Field(default=None, ge=0, le=120)
    active: bool | None = None


class TherapistPatch(Strict):
    name: Name | None = Field(default=None, min_length=1, max_length=200)
    modalities: list[str] | None = Field(default=None, min_length=1)
    active: bool | None = None


class WorkingWeekIn(Strict):
    effective_from: date = Field(
        ge=date(1970, 1, 1),
        le=date(2999, 12, 31),
        description="local date from which the new week holds",
    )
    working_hours: list[WorkingHoursIn]


class WorkingWeekOut(BaseModel):
    effective_from: date
    working_hours: list[WorkingHoursIn]
    conflicts: list[ConflictOut] = Field(default_factory=list)


class WorkingWeeksOut(BaseModel):
    therapist_id: str
    versions: list[WorkingWeekOut]


class TimeOffPatch(Strict):
    start: Instant | None = None
    end: Instant | None = None
    reason: str | None = Field(default=None, max_length=500)

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return as_utc(value) if value is not None else None


class TimeOffChangeOut(BaseModel):
    id: str
    therapist_id: str
    start: datetime
    end: datetime
    reason: str | None
    conflicts: list[ConflictOut] = Field(default_factory=list)


class ClosureIn(Strict):
    start: Instant
    end: Instant
    reason: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _ordered(self) -> ClosureIn:
        self.start, self.end = as_utc(self.start), as_utc(self.end)
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class ClosureOut(BaseModel):
    id: str
    location_id: str
    start: datetime
    end: datetime
    reason: str | None
    conflicts: list[ConflictOut] = Field(default_factory=list)
