"""Referrals' tables (SQLAlchemy 2 ORM): partners, plans, referrals, deliveries, and the
copy of booking's clients that arrives by events."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship

from services.referrals.domain import LIVE
from shared.db import UtcDateTime as UtcDateTimeType
from shared.tables import service_metadata


class Base(DeclarativeBase):
    metadata = service_metadata()


UtcDateTime = UtcDateTimeType()

_LIVE_SQL = "task_status IN ({})".format(", ".join(f"'{s.value}'" for s in sorted(LIVE)))


class Partner(Base):
    """A PT clinic, an acupuncturist…: who receives referrals, and how."""

    __tablename__ = "partners"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    discipline: Mapped[str] = mapped_column(String(32))
    phone: Mapped[str] = mapped_column(String(20))
    email: Mapped[str] = mapped_column(String(320))
    location_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    webhook_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    #: Fernet token: the secret is needed to sign, so it is encrypted rather than hashed.
    webhook_secret_sealed: Mapped[str] = mapped_column(Text)
    api_key_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Client(Base):
    """What booking's ``booking.client.*`` events told us about a client (event-carried)."""

    __tablename__ = "clients"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    date_of_birth: Mapped[date | None] = mapped_column(Date, nullable=True)
    phone: Mapped[str] = mapped_column(String(20))
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    sms_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The ``time`` of the event applied last: an older event arriving late changes nothing.
    source_time: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Plan(Base):
    """A client's multi-therapy care plan."""

    __tablename__ = "plans"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), index=True)
    #: The booking location the plan is run from: its front desk sees the plan, its
    #: referrals and its client. NULL for plans made before locations were recorded.
    location_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    goals: Mapped[str] = mapped_column(Text)
    baseline_pain_score: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(20))  # active | completed
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)

    components: Mapped[list[PlanComponent]] = relationship(
        order_by="PlanComponent.position", cascade="all, delete-orphan", lazy="selectin"
    )
    #: The check-in scores recorded toward this plan, oldest first (``Outcome``).
    outcomes: Mapped[list[Outcome]] = relationship(
        order_by="(Outcome.answered_at, Outcome.id)", lazy="selectin", viewonly=True
    )


class PlanComponent(Base):
    """One discipline of a plan: how many sessions, how often, with whom, how far along."""

    __tablename__ = "plan_components"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    discipline: Mapped[str] = mapped_column(String(32))
    sessions: Mapped[int] = mapped_column(Integer)
    per_week: Mapped[int] = mapped_column(Integer)
    partner_id: Mapped[str | None] = mapped_column(ForeignKey("partners.id"), nullable=True)
    completed_sessions: Mapped[int] = mapped_column(Integer, default=0)
    no_shows: Mapped[int] = mapped_column(Integer, default=0)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)

    __table_args__ = (UniqueConstraint("plan_id", "discipline", name="uq_plan_components_plan"),)


class CountedSession(Base):
    """A booking session already counted toward a plan: a second event for it counts nothing."""

    __tablename__ = "counted_sessions"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"), index=True)
    outcome: Mapped[str] = mapped_column(String(20))  # completed | no_show
    counted_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Outcome(Base):
    """A client's check-in answer (``reminders.outcome.recorded``): pain 0-10 after a session.

    One per booking session: the unique ``session_id`` makes a replayed event (even under a
    new event id) record nothing. ``plan_id`` is the plan it counts toward, or NULL when the
    client had no plan then: the score is kept for the client (FHIR Observation) but joins
    no later plan, since it was given before that plan's baseline.
    """

    __tablename__ = "outcomes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(String(64), index=True)
    plan_id: Mapped[str | None] = mapped_column(ForeignKey("plans.id"), nullable=True, index=True)
    score: Mapped[int] = mapped_column(Integer)
    answered_at: Mapped[datetime] = mapped_column(UtcDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Referral(Base):
    """A referral to one partner for one discipline of a plan; its lifecycle is a FHIR Task."""

    __tablename__ = "referrals"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"), index=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    client_id: Mapped[str] = mapped_column(String(64), index=True)
    discipline: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    diagnosis_codes: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    urgency: Mapped[str] = mapped_column(String(10))
    consent_to_share: Mapped[bool] = mapped_column(Boolean)
    consent_recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)
    #: FHIR Task.status: the state machine (``domain.TRANSITIONS``).
    task_status: Mapped[str] = mapped_column(String(20), index=True)
    #: The lifecycle word of the last transition = the last ``referrals.referral.<status>``.
    status: Mapped[str] = mapped_column(String(20))
    business_status: Mapped[str | None] = mapped_column(String(40), nullable=True)
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    first_visit_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    report_summary: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Deferred: lists never load report PDFs (up to 5 MB each); ``report_pdf_size`` is
    #: computed by the database, and :func:`pdf_size` reads it.
    report_pdf: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
    report_pdf_size: Mapped[int | None] = column_property(func.length(report_pdf))
    sessions_reported: Mapped[int | None] = mapped_column(Integer, nullable=True)
    issued_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    received_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    answered_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    remind_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    expire_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    reminded_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    #: The active scheduler has put this referral's deadline jobs in its job store.
    deadlines_scheduled: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_referrals_partner_created", "partner_id", "created_at"),
        Index("ix_referrals_deadlines", "deadlines_scheduled", "task_status"),
        # One live referral per partner and discipline in a plan; the database enforces it.
        Index(
            "uq_referrals_live_per_partner",
            "plan_id",
            "partner_id",
            "discipline",
            unique=True,
            sqlite_where=text(_LIVE_SQL),
            postgresql_where=text(_LIVE_SQL),
        ),
    )


class ReferralHistory(Base):
    """Every transition and report of a referral, in order: the audit trail and Task.note."""

    __tablename__ = "referral_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    referral_id: Mapped[str] = mapped_column(ForeignKey("referrals.id"), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    action: Mapped[str] = mapped_column(String(32))
    task_status: Mapped[str] = mapped_column(String(20))
    business_status: Mapped[str | None] = mapped_column(String(40), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    actor: Mapped[str] = mapped_column(String(64))


class Delivery(Base):
    """One webhook notification to a partner, retried with backoff until its deadline."""

    __tablename__ = "deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    referral_id: Mapped[str] = mapped_column(ForeignKey("referrals.id"), index=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    kind: Mapped[str] = mapped_column(String(20))  # requested | reminder | cancelled | expired
    status: Mapped[str] = mapped_column(String(20))  # pending | delivered | failed | superseded
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime)
    deadline_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)

    __table_args__ = (Index("ix_deliveries_due", "status", "next_attempt_at"),)


def pdf_size(row: Referral) -> int | None:
    """The report PDF's size in bytes, without loading the PDF: the database's count, or
    the length of a PDF this session has just set on the row."""
    if "report_pdf" in row.__dict__:
        return len(row.__dict__["report_pdf"] or b"") or None
    return row.report_pdf_size or None
