"""Booking's tables (SQLAlchemy 2 ORM) and the queries availability needs."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.db import UtcDateTime as UtcDateTimeType
from shared.tables import service_metadata


class Base(DeclarativeBase):
    metadata = service_metadata()


UtcDateTime = UtcDateTimeType()

#: ``effective_from`` of the working hours a therapist was created with: "since always".
FIRST_DAY = date(1970, 1, 1)


class Location(Base):
    __tablename__ = "locations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(500))
    phone: Mapped[str] = mapped_column(String(20))
    min_notice_minutes: Mapped[int] = mapped_column(Integer, default=60)
    horizon_days: Mapped[int] = mapped_column(Integer, default=90)
    late_cancel_hours: Mapped[int] = mapped_column(Integer, default=24)
    slot_step_minutes: Mapped[int] = mapped_column(Integer, default=15)
    ics_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    rooms: Mapped[list[Room]] = relationship(back_populates="location", order_by="Room.name")


class Room(Base):
    __tablename__ = "rooms"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    location_id: Mapped[str] = mapped_column(ForeignKey("locations.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    #: A retired room is offered no more; its booked sessions stay (changes.py).
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())

    location: Mapped[Location] = relationship(back_populates="rooms")

    __table_args__ = (UniqueConstraint("location_id", "name", name="uq_rooms_location_name"),)


class Treatment(Base):
    """A treatment type (the contract calls it a service): modality, length, turnover."""

    __tablename__ = "treatments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    modality: Mapped[str] = mapped_column(String(64))
    duration_minutes: Mapped[int] = mapped_column(Integer)
    buffer_minutes: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class Therapist(Base):
    __tablename__ = "therapists"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    modalities: Mapped[list[str]] = mapped_column(JSON)
    ics_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())

    working_hours: Mapped[list[WorkingHours]] = relationship(
        cascade="all, delete-orphan", order_by="(WorkingHours.weekday, WorkingHours.start)"
    )
    weeks: Mapped[list[WorkingWeek]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="WorkingWeek.effective_from"
    )


class WorkingHours(Base):
    __tablename__ = "working_hours"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    therapist_id: Mapped[str] = mapped_column(ForeignKey("therapists.id"), index=True)
    location_id: Mapped[str] = mapped_column(ForeignKey("locations.id"))
    weekday: Mapped[int] = mapped_column(Integer)
    start: Mapped[str] = mapped_column(String(5))  # "HH:MM", wall clock at the location
    end: Mapped[str] = mapped_column(String(5))
    #: The week this row belongs to holds from this local date until the next version's.
    effective_from: Mapped[date] = mapped_column(
        Date, default=FIRST_DAY, server_default=FIRST_DAY.isoformat()
    )


class WorkingWeek(Base):
    """A version of a therapist's week, from ``effective_from`` on (``PUT …/working-hours``).

    Its rows are the ``working_hours`` with the same ``effective_from``; a version may have
    none (the therapist stops working). The week a therapist was created with has no row
    here: it holds from ``FIRST_DAY``.
    """

    __tablename__ = "working_weeks"

    therapist_id: Mapped[str] = mapped_column(ForeignKey("therapists.id"), primary_key=True)
    effective_from: Mapped[date] = mapped_column(Date, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class TimeOff(Base):
    __tablename__ = "time_off"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    therapist_id: Mapped[str] = mapped_column(ForeignKey("therapists.id"))
    start_at: Mapped[datetime] = mapped_column(UtcDateTime)
    end_at: Mapped[datetime] = mapped_column(UtcDateTime)
    reason: Mapped[str | None] = mapped_column(String(500), nullable=True)

    __table_args__ = (Index("ix_time_off_therapist_span", "therapist_id", "start_at", "end_at"),)


class Closure(Base):
    """A location closed for a span (holiday, repairs): every therapist and room there is off."""

    __tablename__ = "closures"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    location_id: Mapped[str] = mapped_column(ForeignKey("locations.id"))
    start_at: Mapped[datetime] = mapped_column(UtcDateTime)
    end_at: Mapped[datetime] = mapped_column(UtcDateTime)
    reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_closures_location_span", "location_id", "start_at", "end_at"),)


class Client(Base):
    __tablename__ = "clients"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    phone: Mapped[str] = mapped_column(String(20), index=True)
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    date_of_birth: Mapped[date | None] = mapped_column(Date, nullable=True)
    sms_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    sms_consent_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    sms_consent_source: Mapped[str | None] = mapped_column(String(100), nullable=True)
    #: The location the client belongs to: its front desk sees the client before any session.
    home_location_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    #: BCP 47 tag of the language texts to this client are written in.
    language: Mapped[str] = mapped_column(String(35), default="en", server_default="en")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Session(Base):
    """A booked treatment. ``blocked_until`` = end + buffer: the span therapist and room are held.

    On PostgreSQL two exclusion constraints (see the migration) make a double booking of a
    therapist or a room impossible, whatever the application checks.
    """

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"), index=True)
    treatment_id: Mapped[str] = mapped_column(ForeignKey("treatments.id"))
    location_id: Mapped[str] = mapped_column(ForeignKey("locations.id"))
    therapist_id: Mapped[str] = mapped_column(ForeignKey("therapists.id"))
    room_id: Mapped[str] = mapped_column(ForeignKey("rooms.id"))
    start_at: Mapped[datetime] = mapped_column(UtcDateTime)
    end_at: Mapped[datetime] = mapped_column(UtcDateTime)
    blocked_until: Mapped[datetime] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(20))
    version: Mapped[int] = mapped_column(Integer, default=1)
    cancel_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    late_cancel: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    client: Mapped[Client] = relationship(lazy="joined")
    treatment: Mapped[Treatment] = relationship(lazy="joined")
    location: Mapped[Location] = relationship(lazy="joined")
    therapist: Mapped[Therapist] = relationship(lazy="joined")

    __table_args__ = (
        Index("ix_sessions_therapist_span", "therapist_id", "start_at", "blocked_until"),
        Index("ix_sessions_room_span", "room_id", "start_at", "blocked_until"),
        Index("ix_sessions_location_start", "location_id", "start_at"),
        # Availability reads a window from this index alone (migration 0008).
        Index(
            "ix_sessions_window", "start_at", "blocked_until", "status", "therapist_id", "room_id"
        ),
    )


class IdempotentRequest(Base):
    """The first answer to a request carrying an ``Idempotency-Key``, replayed on a retry."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


# ---------------------------------------------------------------------------------------
# Calendar sync (see the calendar package): outside calendars linked to a therapist or a
# location, what still has to be written to each, and the busy time read from them.


class CalendarLink(Base):
    """A CalDAV calendar we write sessions into (push), or one we read busy time from (pull).

    The password is stored encrypted (Fernet, ``BOOKING_SECRET_KEY``) and never returned.
    ``consecutive_failures``, ``retry_at`` and the lease are the sync's bookkeeping: a
    calendar that keeps failing is retried ever more slowly without holding up the others,
    and one replica at a time works on a link.
    """

    __tablename__ = "calendar_links"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_type: Mapped[str] = mapped_column(String(20))  # therapist | location
    owner_id: Mapped[str] = mapped_column(String(36))
    direction: Mapped[str] = mapped_column(String(10))  # push | pull
    kind: Mapped[str] = mapped_column(String(10))  # caldav | ics
    url: Mapped[str] = mapped_column(String(2000))
    username: Mapped[str | None] = mapped_column(String(200), nullable=True)
    password_encrypted: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Zone for all-day and floating times of a pulled calendar (IANA).
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_synced_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_error_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    retry_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)

    __table_args__ = (
        UniqueConstraint(
            "owner_type", "owner_id", "direction", "url", name="uq_calendar_links_target"
        ),
        Index("ix_calendar_links_owner", "owner_type", "owner_id", "direction"),
    )


class CalendarPush(Base):
    """One session in one push calendar: written up to ``pushed_version``, wanted at
    ``wanted_version``. A row with ``pushed_version`` NULL or behind is still to do."""

    __tablename__ = "calendar_pushes"

    link_id: Mapped[str] = mapped_column(
        ForeignKey("calendar_links.id", ondelete="CASCADE"), primary_key=True
    )
    session_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    wanted_version: Mapped[int] = mapped_column(Integer, default=0)
    pushed_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: Whether the calendar holds the event after the last push (False: it was removed).
    in_calendar: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Where the event was stored (the server's URL of it), for removing it later.
    href: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    #: When the latest change asking for this push was seen (the lag of a pending push).
    requested_at: Mapped[datetime] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_calendar_pushes_session", "session_id"),
        Index("ix_calendar_pushes_due", "link_id", "next_attempt_at"),
    )


class ExternalBusy(Base):
    """A span a therapist's own calendar says they are busy; blocks availability like time off.

    Only the span and the event's UID are kept, never its title: it is the therapist's
    private calendar.
    """

    __tablename__ = "external_busy"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    link_id: Mapped[str] = mapped_column(
        ForeignKey("calendar_links.id", ondelete="CASCADE"), index=True
    )
    therapist_id: Mapped[str] = mapped_column(String(36))
    start_at: Mapped[datetime] = mapped_column(UtcDateTime)
    end_at: Mapped[datetime] = mapped_column(UtcDateTime)
    uid: Mapped[str] = mapped_column(String(500))

    __table_args__ = (
        Index("ix_external_busy_therapist_span", "therapist_id", "start_at", "end_at"),
    )


# ---------------------------------------------------------------------------------------
# Waitlist (see services.booking.waitlist): clients waiting for a treatment, the slots
# freed by cancels and moves, and the offers of those slots to the waiting clients.


class WaitlistEntry(Base):
    """A client waiting for ``treatment_id`` at a location, maybe with one therapist, on a
    local date in ``[earliest, latest]`` and, if given, at some times of day."""

    __tablename__ = "waitlist_entries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"))
    treatment_id: Mapped[str] = mapped_column(ForeignKey("treatments.id"))
    location_id: Mapped[str] = mapped_column(ForeignKey("locations.id"))
    therapist_id: Mapped[str | None] = mapped_column(ForeignKey("therapists.id"), nullable=True)
    earliest: Mapped[date] = mapped_column(Date)
    latest: Mapped[date] = mapped_column(Date)
    #: ``morning``, ``afternoon``, ``evening``; empty means any time.
    times_of_day: Mapped[list[str]] = mapped_column(JSON)
    #: waiting | filled | removed
    status: Mapped[str] = mapped_column(String(20))
    #: The session a claimed offer booked (status filled).
    session_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)

    client: Mapped[Client] = relationship(lazy="joined")

    __table_args__ = (
        Index("ix_waitlist_entries_match", "location_id", "treatment_id", "status", "created_at"),
    )


class WaitlistSlot(Base):
    """A slot freed by a cancel or a move, offered to the waitlist until claimed or gone.

    ``status`` open | filled | closed: the claim that turns it from open to filled (a
    conditional UPDATE) is the one that books; every other claim is told "taken"."""

    __tablename__ = "waitlist_slots"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    location_id: Mapped[str] = mapped_column(ForeignKey("locations.id"))
    treatment_id: Mapped[str] = mapped_column(ForeignKey("treatments.id"))
    therapist_id: Mapped[str] = mapped_column(ForeignKey("therapists.id"))
    start_at: Mapped[datetime] = mapped_column(UtcDateTime)
    end_at: Mapped[datetime] = mapped_column(UtcDateTime)
    #: The session whose cancel or move freed it.
    freed_by: Mapped[str] = mapped_column(String(36))
    status: Mapped[str] = mapped_column(String(20))
    session_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    location: Mapped[Location] = relationship(lazy="joined")


class WaitlistOffer(Base):
    """One slot offered to one entry: open until ``expires_at``, then filled, taken or
    expired. A client is offered a slot once (unique), and holds one open offer at a time."""

    __tablename__ = "waitlist_offers"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    slot_id: Mapped[str] = mapped_column(ForeignKey("waitlist_slots.id"))
    entry_id: Mapped[str] = mapped_column(ForeignKey("waitlist_entries.id"), index=True)
    client_id: Mapped[str] = mapped_column(String(36))
    #: open | filled | taken | expired
    status: Mapped[str] = mapped_column(String(20))
    offered_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)

    slot: Mapped[WaitlistSlot] = relationship(lazy="joined")
    entry: Mapped[WaitlistEntry] = relationship(lazy="joined")

    __table_args__ = (
        UniqueConstraint("slot_id", "client_id", name="uq_waitlist_offers_slot_client"),
        Index("ix_waitlist_offers_status_expires", "status", "expires_at"),
        Index("ix_waitlist_offers_client_status", "client_id", "status"),
    )


class SetupGeneration(Base):
    """One row: a random token every change of a set-up table replaces, by trigger
    (migration 0007). ``setup_cache`` reads it to know whether its copy still holds."""

    __tablename__ = "setup_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    token: Mapped[str] = mapped_column(String(64))
