"""Pure rules of referrals: the FHIR Task state machine, the rules a referral must meet,
deadlines, retry backoff, plan progress.

No I/O here. Each broken rule is an exception of its own, named after the rule and
subclassing the shared error that says its HTTP status (``shared.errors``). ``fhir.resources`` does not enforce code sets (``Task.status="approved"``
passes its validation), so the Task statuses and the transitions between them are ours.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from shared.errors import Conflict, InvalidRequest

PartnerDiscipline = Literal["physical_therapy", "acupuncture", "chiropractic", "other"]
PlanDiscipline = Literal["massage", "physical_therapy", "acupuncture", "chiropractic", "other"]
Urgency = Literal["routine", "urgent", "asap"]

#: The clinic's own discipline: booking's sessions count toward it.
MASSAGE = "massage"


class TaskStatus(StrEnum):
    """FHIR R4 Task.status (http://hl7.org/fhir/task-status), all twelve codes."""

    DRAFT = "draft"
    REQUESTED = "requested"
    RECEIVED = "received"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    READY = "ready"
    CANCELLED = "cancelled"
    IN_PROGRESS = "in-progress"
    ON_HOLD = "on-hold"
    FAILED = "failed"
    COMPLETED = "completed"
    ENTERED_IN_ERROR = "entered-in-error"


class BusinessStatus(StrEnum):
    """Task.businessStatus: what the Task status alone does not say."""

    AWAITING_CLIENT_DETAILS = "awaiting-client-details"
    REMINDER_SENT = "reminder-sent"
    SCHEDULED = "scheduled"
    NO_SHOW = "no-show"
    INTERIM_NOTE = "interim-note"
    EXPIRED = "expired"
    DELIVERY_FAILED = "delivery-failed"


S = TaskStatus

#: Waiting for the partner's answer: the deadlines run.
AWAITING_ANSWER = frozenset({S.REQUESTED, S.RECEIVED})
#: A referral in one of these counts as "the" referral of its partner and discipline in a plan.
LIVE = frozenset({S.DRAFT, S.REQUESTED, S.RECEIVED, S.ACCEPTED, S.IN_PROGRESS})


@dataclass(frozen=True)
class Transition:
    """A named move of the state machine and the lifecycle word its event announces."""

    action: str
    sources: frozenset[TaskStatus]
    target: TaskStatus
    announces: str


TRANSITIONS: dict[str, Transition] = {
    t.action: t
    for t in (
        # Client details arrived (or were there): the partner may see it now.
        Transition("issue", frozenset({S.DRAFT}), S.REQUESTED, "sent"),
        # The partner has it: its webhook answered 2xx, or it read it through the API.
        Transition("receive", frozenset({S.REQUESTED}), S.RECEIVED, "received"),
        Transition("accept", AWAITING_ANSWER, S.ACCEPTED, "accepted"),
        Transition("decline", AWAITING_ANSWER, S.REJECTED, "declined"),
        # First visit scheduled; scheduling again moves it (the event is sent again).
        Transition("schedule", frozenset({S.ACCEPTED, S.IN_PROGRESS}), S.IN_PROGRESS, "scheduled"),
        Transition("complete", frozenset({S.IN_PROGRESS}), S.COMPLETED, "completed"),
        Transition("cancel", LIVE, S.CANCELLED, "cancelled"),
        # Not accepted in time: the clinic withdraws it (Task "cancelled", event "expired").
        Transition("expire", AWAITING_ANSWER, S.CANCELLED, "expired"),
        # The webhook could not deliver it for the whole retry window.
        Transition("fail", frozenset({S.REQUESTED}), S.FAILED, "failed"),
    )
}

#: What each transition does to Task.businessStatus; an action not listed keeps it.
BUSINESS_STATUS_AFTER: dict[str, BusinessStatus | None] = {
    "issue": None,
    "accept": None,
    "decline": None,
    "schedule": BusinessStatus.SCHEDULED,
    "complete": None,
    "cancel": None,
    "expire": BusinessStatus.EXPIRED,
    "fail": BusinessStatus.DELIVERY_FAILED,
}

#: Business-status updates a partner may report, and in which Task statuses.
BUSINESS_UPDATES: dict[BusinessStatus, frozenset[TaskStatus]] = {
    BusinessStatus.NO_SHOW: frozenset({S.IN_PROGRESS}),
    BusinessStatus.INTERIM_NOTE: frozenset({S.ACCEPTED, S.IN_PROGRESS}),
}


class IllegalTransition(Conflict):
    """The referral's current status does not allow this action (409)."""


def transition(current: str, action: str) -> Transition:
    """The transition ``action`` makes from ``current``; :class:`IllegalTransition` if none."""
    move = TRANSITIONS.get(action)
    if move is None:
        raise ValueError(f"unknown referral action {action!r}")
    if current not in move.sources:
        allowed = ", ".join(sorted(move.sources))
        raise IllegalTransition(
            f"cannot {action} a referral whose task status is {current} (allowed from: {allowed})"
        )
    return move


def check_business_update(current: str, update: BusinessStatus) -> None:
    """Refuse a business-status report the Task status does not allow (HTTP 409)."""
    allowed = BUSINESS_UPDATES[update]
    if current not in allowed:
        raise IllegalTransition(
            f"cannot report {update.value} on a referral whose task status is {current} "
            f"(allowed in: {', '.join(sorted(allowed))})"
        )


# ---------------------------------------------------------------------------------------
# Rules of partners, plans and referrals


class PlanNotActive(Conflict):
    """A referral is only made for an active plan (409)."""

    def __init__(self, plan_id: str, status: str) -> None:
        super().__init__(f"plan {plan_id} is {status}")


class ReferralAlreadyLive(Conflict):
    """A partner has at most one live referral per plan and discipline: cancel it first (409)."""

    def __init__(
        self, partner_id: str | None = None, referral_id: str | None = None, discipline: str = ""
    ) -> None:
        if referral_id is None:
            super().__init__("this partner already has a live referral for this plan")
        else:
            super().__init__(
                f"partner {partner_id} already has referral {referral_id} for this plan's "
                f"{discipline}; cancel it first"
            )


class ConsentRequired(InvalidRequest):
    """Nothing about a client is shared with a partner without the client's consent (422)."""

    def __init__(self) -> None:
        super().__init__("consent_to_share", "the client must consent to sharing")


class WebhookMustBeHttps(InvalidRequest):
    """In production a partner's webhook carries health data: TLS only (422)."""

    def __init__(self) -> None:
        super().__init__("webhook_url", "must be https in production")


class UnknownPartner(InvalidRequest):
    """The request names a partner that does not exist (422: the body is wrong, not the URL)."""

    def __init__(self, field_name: str, partner_id: str) -> None:
        super().__init__(field_name, f"partner {partner_id} not found")


class UnknownPlan(InvalidRequest):
    """The request names a plan that does not exist (422)."""

    def __init__(self, plan_id: str) -> None:
        super().__init__("plan_id", f"plan {plan_id} not found")


class MassageTakesNoPartner(InvalidRequest):
    """Massage is the clinic's own discipline: no partner gives it (422)."""

    def __init__(self, field_name: str) -> None:
        super().__init__(field_name, "massage is the clinic's own; it takes no partner")


class WrongDiscipline(InvalidRequest):
    """A partner is only referred for the discipline it offers (422)."""

    def __init__(self, field_name: str, partner_id: str, offers: str, wanted: str) -> None:
        super().__init__(field_name, f"partner {partner_id} offers {offers}, not {wanted}")


class DisciplineNotInPlan(InvalidRequest):
    """A referral goes to a partner whose discipline is part of the plan (422)."""

    def __init__(self, partner_id: str, discipline: str, plan_id: str, have: Sequence[str]) -> None:
        super().__init__(
            "partner_id",
            f"partner {partner_id} offers {discipline}, which plan {plan_id} "
            f"does not include (it has: {', '.join(have)})",
        )


class DiagnosisCodeRefused(InvalidRequest):
    """A diagnosis code the service will not send to a partner (422, see ``codes``)."""

    def __init__(self, message: str) -> None:
        super().__init__("diagnosis_codes", message)


# ---------------------------------------------------------------------------------------
# Deadlines and retries


def answer_deadlines(
    issued_at: datetime, accept_hours: float, expire_after_hours: float
) -> tuple[datetime, datetime]:
    """When the partner is reminded, and when the referral expires, if it is not accepted."""
    remind_at = issued_at + timedelta(hours=accept_hours)
    return remind_at, remind_at + timedelta(hours=expire_after_hours)


def retry_delay_seconds(
    attempts: int,
    base_seconds: float,
    max_seconds: float,
    jitter: float = 0.1,
    rand: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff after ``attempts`` failed attempts: base, 2×base, 4×base … ± jitter."""
    delay = min(base_seconds * 2 ** max(attempts - 1, 0), max_seconds)
    return float(delay * (1 + jitter * (2 * rand() - 1)))


def next_attempt_at(now: datetime, deadline: datetime, delay_seconds: float) -> datetime | None:
    """The next attempt after a failure, or ``None`` when the retry window is over.

    The last attempt is made at the deadline itself rather than skipped.
    """
    if now >= deadline:
        return None
    return min(now + timedelta(seconds=delay_seconds), deadline)


# ---------------------------------------------------------------------------------------
# Plan progress


@dataclass(frozen=True)
class ComponentProgress:
    """One discipline of a care plan and how far it has come."""

    discipline: str
    sessions: int
    per_week: int
    completed: int = 0
    no_shows: int = 0
    partner_id: str | None = None
    #: The partner completed its referral (possibly in fewer sessions than planned).
    closed: bool = False

    @property
    def done(self) -> bool:
        """Done when the planned sessions took place (a no-show is counted, but is no
        session), or when the partner reported its referral completed."""
        return self.closed or self.completed >= self.sessions


def plan_progress(components: Sequence[ComponentProgress]) -> dict[str, Any]:
    """The ``progress`` of ``referrals.plan.*`` events and of the plan's JSON."""
    done = sum(1 for c in components if c.done)
    return {
        "components": [
            {
                "discipline": c.discipline,
                "sessions": c.sessions,
                "per_week": c.per_week,
                "completed": c.completed,
                "no_shows": c.no_shows,
                "done": c.done,
                "partner_id": c.partner_id,
            }
            for c in components
        ],
        "components_done": done,
        "components_total": len(components),
        "completed": bool(components) and done == len(components),
    }


# -- outcomes (check-in pain scores) ----------------------------------------------------------

#: Partners treating the client: a new pain score is pushed to their webhook.
TREATING = frozenset({S.ACCEPTED, S.IN_PROGRESS})


@dataclass(frozen=True)
class OutcomeSummary:
    """The plan's trend beside its baseline: the latest check-in score (0-10, lower is less
    pain) and how far it is from the baseline typed when the plan was made (negative:
    better). ``None`` where there is nothing to compare."""

    baseline_pain_score: int | None
    latest: int | None
    change_from_baseline: int | None
    count: int


def outcome_summary(baseline: int | None, scores_oldest_first: Sequence[int]) -> OutcomeSummary:
    """Summarize a plan's scores (oldest first) against its baseline."""
    latest = scores_oldest_first[-1] if scores_oldest_first else None
    change = latest - baseline if latest is not None and baseline is not None else None
    return OutcomeSummary(
        baseline_pain_score=baseline,
        latest=latest,
        change_from_baseline=change,
        count=len(scores_oldest_first),
    )
