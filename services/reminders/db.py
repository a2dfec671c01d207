"""Reminders' tables: what it learned from events, its rules, consent per phone, the message
log (also the send ledger), and APScheduler's job table (owned by the migrations)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    Unicode,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UtcDateTime as UtcDateTimeType
from shared.tables import service_metadata


class Base(DeclarativeBase):
    metadata = service_metadata()


#: APScheduler's SQLAlchemyJobStore table, declared here so Alembic owns it (the store
#: would create the same table itself; with it present, it creates nothing).
JOBS_TABLE = "apscheduler_jobs"
apscheduler_jobs = Table(
    JOBS_TABLE,
    Base.metadata,
    Column("id", Unicode(191), primary_key=True),
    Column("next_run_time", Float(25), index=True),
    Column("job_state", LargeBinary, nullable=False),
)

UtcDateTime = UtcDateTimeType()


class Client(Base):
    """A client as booking's events describe them: enough to text and greet."""

    __tablename__ = "clients"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    first_name: Mapped[str] = mapped_column(String(100))
    phone: Mapped[str] = mapped_column(String(20), index=True)
    sms_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    #: BCP 47, as booking's events carry it; None (English) until one says.
    language: Mapped[str | None] = mapped_column(String(35), nullable=True)
    #: Time of the event these facts come from: an older event never overwrites them.
    as_of: Mapped[datetime] = mapped_column(UtcDateTime)


class Session(Base):
    """A session as booking's events describe it, and where its planning stands."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(36), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    start_at: Mapped[datetime] = mapped_column(UtcDateTime)
    end_at: Mapped[datetime] = mapped_column(UtcDateTime)
    location_id: Mapped[str] = mapped_column(String(36), index=True)
    location_name: Mapped[str] = mapped_column(String(200))
    location_timezone: Mapped[str] = mapped_column(String(64))
    location_phone: Mapped[str] = mapped_column(String(20))
    #: Only for the aftercare page behind the signed link; never in a text.
    modality: Mapped[str] = mapped_column(String(64))
    #: The client's own page for this session (booking signs it); in confirmations,
    #: reminders and the answer to ``R``. None when booking issues no link.
    manage_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    booked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    changed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    rescheduled_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    rescheduled_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    #: When booking marked it completed: the check-in counts from here.
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    #: Bumped by every change; the planner has planned up to ``planned_seq``.
    change_seq: Mapped[int] = mapped_column(Integer, default=1)
    planned_seq: Mapped[int] = mapped_column(Integer, default=0)
    plan_pending: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    #: Job ids the planner put in the job store last time (to remove the ones dropped).
    planned_jobs: Mapped[list[str]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class PhoneConsent(Base):
    """A phone's own say (STOP, START): stronger than what the front desk recorded."""

    __tablename__ = "phone_consent"

    phone: Mapped[str] = mapped_column(String(20), primary_key=True)
    sms_consent: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(100))
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime)


class RuleSetRow(Base):
    """``scope`` is ``*`` for the defaults or a location id for its overrides."""

    __tablename__ = "rule_sets"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Message(Base):
    """The message log, also the send ledger: ``key`` names one planned message, unique,
    and its row is written (status ``submitting``) before the provider is called."""

    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)
    direction: Mapped[str] = mapped_column(String(20))  # outbound, inbound, reply
    session_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    referral_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    client_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    location_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    rule: Mapped[str | None] = mapped_column(String(60), nullable=True)
    kind: Mapped[str | None] = mapped_column(String(20), nullable=True)
    phone: Mapped[str] = mapped_column(String(20), index=True)
    body: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20), index=True)
    reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    error_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    provider_sid: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    in_reply_to: Mapped[str | None] = mapped_column(String(36), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    deadline_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    submitted_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    #: The send lease: which process is asking the provider for this row, and until when
    #: (renewed while it works). The database, not the queue, decides who sends.
    sending_by: Mapped[str | None] = mapped_column(String(80), nullable=True)
    sending_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)

    __table_args__ = (Index("ix_messages_created", "created_at"),)


class EarlyStatus(Base):
    """A status callback that arrived before the send that caused it was recorded."""

    __tablename__ = "early_statuses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider_sid: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(20))
    error_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ReferralNotice(Base):
    """A referral update to text the client about (accepted, scheduled)."""

    __tablename__ = "referral_notices"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)  # <referral_id>:<status>
    referral_id: Mapped[str] = mapped_column(String(36), index=True)
    client_id: Mapped[str] = mapped_column(String(36))
    status: Mapped[str] = mapped_column(String(20))
    discipline: Mapped[str] = mapped_column(String(40))
    happened_at: Mapped[datetime] = mapped_column(UtcDateTime)
    plan_pending: Mapped[bool] = mapped_column(Boolean, default=True, index=True)


class Question(Base):
    """A text that asked something of a phone, and until when it is open: a reply is read
    against the latest one still open (``C``: a session; a number: a check-in; ``BOOK``:
    a waitlist offer). ``id`` is the ledger key of the text that asked it."""

    __tablename__ = "questions"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    phone: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(20))  # confirm, checkin, offer
    client_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    offer_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    asked_at: Mapped[datetime] = mapped_column(UtcDateTime)
    closes_at: Mapped[datetime] = mapped_column(UtcDateTime)
    #: Set once by the answer that counted (a check-in is recorded once).
    answered_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    answer_sid: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (Index("ix_questions_phone_asked", "phone", "asked_at"),)


class WaitlistOffer(Base):
    """An offer of a freed slot, as booking's ``booking.waitlist.*`` events describe it:
    what the offer text and the "taken" text need, and where its texts stand."""

    __tablename__ = "waitlist_offers"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # booking's offer_id
    entry_id: Mapped[str] = mapped_column(String(36))
    client_id: Mapped[str] = mapped_column(String(36), index=True)
    slot_start: Mapped[datetime] = mapped_column(UtcDateTime)
    slot_end: Mapped[datetime] = mapped_column(UtcDateTime)
    location_id: Mapped[str] = mapped_column(String(36))
    location_name: Mapped[str] = mapped_column(String(200))
    location_timezone: Mapped[str] = mapped_column(String(64))
    location_phone: Mapped[str] = mapped_column(String(20))
    offered_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    #: offered, filled, taken, expired (booking's word for how it ended).
    status: Mapped[str] = mapped_column(String(20))
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    #: Texts to plan: "offer" and/or "taken" (planning one again is harmless: its ledger
    #: key sends it once).
    pending: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Bumped by every event; the planner clears ``plan_pending`` only for what it read.
    change_seq: Mapped[int] = mapped_column(Integer, default=0)
    plan_pending: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
