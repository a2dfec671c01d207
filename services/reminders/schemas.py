"""Reminders' HTTP bodies: rules in and out, the message log."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from services.reminders.domain import Kind


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=40, examples=["reminder_24h"])
    kind: Kind
    offset_minutes: int = Field(
        default=0,
        description="From the start for reminders (negative: before), from the end for "
        "follow-ups, from the moment the session was completed for check-ins, 0 for the "
        "kinds sent at once (confirmation, cancellation, reschedule, waitlist_offer)",
    )
    enabled: bool = True


class QuietHoursIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str = Field(default="09:00", examples=["09:00"])
    end: str = Field(default="20:00", examples=["20:00"], description='"24:00" is end of day')


class RuleSetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[RuleIn]
    quiet_hours: QuietHoursIn = Field(default_factory=QuietHoursIn)


class LocationRulesIn(BaseModel):
    """A location's overrides: a rule replaces the default of the same name, a new name adds
    one; quiet hours replace the defaults' when given."""

    model_config = ConfigDict(extra="forbid")

    rules: list[RuleIn] = Field(default_factory=list)
    quiet_hours: QuietHoursIn | None = None


class RulesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: RuleSetIn
    locations: dict[str, LocationRulesIn] = Field(default_factory=dict)


class RulesOut(RulesIn):
    pass


class MessageOut(BaseModel):
    id: str
    direction: str = Field(description="outbound, inbound, or reply (our answer to an inbound)")
    session_id: str | None
    referral_id: str | None
    rule: str | None
    kind: str | None
    phone: str
    body: str
    status: str = Field(
        description="submitting, queued, accepted, sent, delivered, undelivered, failed, "
        "skipped (reason says why), received, replied"
    )
    reason: str | None
    error_code: int | None
    provider_sid: str | None
    attempts: int
    due_at: datetime | None
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None
    delivered_at: datetime | None
