"""The waitlist's request and response bodies."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field, model_validator

from services.booking.schemas import Strict
from services.booking.waitlist.rules import TimeOfDay

#: The longest window one entry may wait over.
MAX_WINDOW_DAYS = 366


class WaitlistEntryIn(Strict):
    client_id: str = Field(max_length=36)
    service_id: str = Field(max_length=36)
    location_id: str = Field(max_length=36)
    therapist_id: str | None = Field(default=None, max_length=36)
    earliest: date = Field(description="first local date the client can come")
    latest: date = Field(description="last local date the client can come")
    times_of_day: list[TimeOfDay] = Field(
        default_factory=list,
        max_length=3,
        description="morning (before 12:00), afternoon (12:00-17:00), evening (from 17:00), "
        "on the location's clock; empty: any time",
    )

    @model_validator(mode="after")
    def _window(self) -> WaitlistEntryIn:
        if self.latest < self.earliest:
            raise ValueError("latest must not be before earliest")
        if (self.latest - self.earliest).days > MAX_WINDOW_DAYS:
            raise ValueError(f"the window may span at most {MAX_WINDOW_DAYS} days")
        self.times_of_day = sorted(
            set(self.times_of_day), key=("morning", "afternoon", "evening").index
        )
        return self


class WaitlistEntryOut(BaseModel):
    id: str
    client_id: str
    service_id: str
    location_id: str
    therapist_id: str | None
    earliest: date
    latest: date
    times_of_day: list[str]
    status: str = Field(description="waiting, filled (a claimed offer booked it) or removed")
    session_id: str | None = Field(description="the session a claimed offer booked")
    created_at: datetime
    ended_at: datetime | None
