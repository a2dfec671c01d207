"""What every router of the HTTP API shares: its context (the use cases' context, the
caller's authentication, the public base URL) and the shapes of the answers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.booking import db, hours
from services.booking.calendar.links import CalendarLinks, LinkView
from services.booking.schemas import (
    CalendarLinkOut,
    ClientOut,
    ConflictOut,
    LocationOut,
    RoomOut,
    SessionOut,
    TherapistOut,
    TreatmentOut,
    WorkingHoursIn,
)
from services.booking.usecases import Booking
from shared.auth import Authenticator, Principal, Scope, clinic_scope
from shared.errors import InvalidRequest
from shared.timeutil import as_utc


@dataclass(frozen=True)
class ApiContext:
    """What the routers call: use cases and queries with ``booking``, the calendar links'
    use cases, and ``authenticate`` (a FastAPI dependency giving the caller)."""

    booking: Booking
    calendar_links: CalendarLinks
    authenticate: Authenticator
    base_url: str

    @property
    def scope(self) -> Any:
        """A FastAPI dependency: the caller's :class:`~shared.auth.Scope` (clinic staff)."""
        return clinic_scope(self.authenticate)


def admin(caller: Principal) -> None:
    caller.require_role("admin")


def aware(moment: datetime, name: str) -> datetime:
    """A query parameter's datetime in UTC; a time without an offset is refused."""
    try:
        return as_utc(moment)
    except ValueError as exc:
        raise InvalidRequest(name, str(exc)) from exc


def location_out(row: db.Location, base_url: str) -> LocationOut:
    return LocationOut(
        id=row.id,
        name=row.name,
        timezone=row.timezone,
        address=row.address,
        phone=row.phone,
        min_notice_minutes=row.min_notice_minutes,
        horizon_days=row.horizon_days,
        late_cancel_hours=row.late_cancel_hours,
        slot_step_minutes=row.slot_step_minutes,
        rooms=[RoomOut.model_validate(r, from_attributes=True) for r in row.rooms],
        ics_url=f"{base_url}/v1/calendars/locations/{row.id}.ics?token={row.ics_token}",
    )


def therapist_out(row: db.Therapist, base_url: str, scope: Scope) -> TherapistOut:
    """The therapist; the feed URL (it holds the token of every session of theirs, at
    every location) only for an admin."""
    return TherapistOut(
        id=row.id,
        name=row.name,
        modalities=row.modalities,
        working_hours=[hours_out(h) for h in hours.current_week(row)],
        active=row.active,
        ics_url=(
            f"{base_url}/v1/calendars/therapists/{row.id}.ics?token={row.ics_token}"
            if scope.everything
            else None
        ),
    )


def hours_out(h: db.WorkingHours) -> WorkingHoursIn:
    return WorkingHoursIn(location_id=h.location_id, weekday=h.weekday, start=h.start, end=h.end)


def conflict_out(row: db.Session) -> ConflictOut:
    return ConflictOut(
        session_id=row.id,
        start=row.start_at,
        end=row.end_at,
        status=row.status,
        therapist_id=row.therapist_id,
        location_id=row.location_id,
    )


def client_out(row: db.Client) -> ClientOut:
    return ClientOut.model_validate(row, from_attributes=True)


def session_out(row: db.Session, manage_url: str | None = None) -> SessionOut:
    return SessionOut(
        manage_url=manage_url,
        id=row.id,
        status=row.status,
        version=row.version,
        client_id=row.client_id,
        service_id=row.treatment_id,
        location_id=row.location_id,
        therapist_id=row.therapist_id,
        room_id=row.room_id,
        start=row.start_at,
        end=row.end_at,
        late_cancel=row.late_cancel,
        cancel_reason=row.cancel_reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def treatment_out(row: db.Treatment) -> TreatmentOut:
    return TreatmentOut.model_validate(row, from_attributes=True)


def calendar_link_out(view: LinkView) -> CalendarLinkOut:
    link = view.link
    return CalendarLinkOut(
        id=link.id,
        owner_type=link.owner_type,
        owner_id=link.owner_id,
        direction=link.direction,
        kind=link.kind,
        url=link.url,
        username=link.username,
        has_password=link.password_encrypted is not None,
        timezone=link.timezone,
        status=view.status,
        last_synced_at=link.last_synced_at,
        last_error=link.last_error,
        last_error_at=link.last_error_at,
        consecutive_failures=link.consecutive_failures,
        pending_pushes=view.pending_pushes,
        busy_spans=view.busy_spans,
        created_at=link.created_at,
    )
