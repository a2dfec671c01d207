"""The referral lifecycle as a FHIR Task state machine, deadlines, retry backoff, plan progress."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.referrals import domain
from services.referrals.domain import BusinessStatus, ComponentProgress, TaskStatus

S = TaskStatus
NOW = datetime(2026, 3, 8, 12, 0, tzinfo=UTC)


def walk(*actions: str) -> TaskStatus:
    status = S.DRAFT
    for action in actions:
        status = domain.transition(status, action).target
    return status


def test_the_happy_path_ends_completed_and_names_each_event() -> None:
    steps = ["issue", "receive", "accept", "schedule", "complete"]
    status, announced = S.DRAFT, []
    for action in steps:
        move = domain.transition(status, action)
        status = move.target
        announced.append(move.announces)
    assert status == S.COMPLETED
    assert announced == ["sent", "received", "accepted", "scheduled", "completed"]


def test_a_partner_may_answer_without_reading_first_and_may_move_the_first_visit() -> None:
    assert walk("issue", "accept") == S.ACCEPTED
    assert walk("issue", "decline") == S.REJECTED
    assert walk("issue", "accept", "schedule", "schedule") == S.IN_PROGRESS


@pytest.mark.parametrize(
    ("history", "action"),
    [
        ((), "accept"),  # a draft has not been sent
        (("issue",), "complete"),  # not scheduled
        (("issue", "accept"), "complete"),
        (("issue", "decline"), "accept"),  # rejected is final
        (("issue", "accept"), "expire"),  # accepted in time
        (("issue", "accept"), "fail"),  # the partner has it: delivery no longer matters
        (("issue", "receive"), "receive"),
        (("issue", "accept", "schedule", "complete"), "cancel"),
        (("issue", "cancel"), "issue"),
    ],
)
def test_illegal_moves_are_refused_with_the_allowed_ones_named(
    history: tuple[str, ...], action: str
) -> None:
    status = walk(*history)
    with pytest.raises(domain.IllegalTransition, match="allowed from"):
        domain.transition(status, action)


def test_every_transition_targets_a_task_status_of_the_fhir_code_set() -> None:
    codes = {
        "draft",
        "requested",
        "received",
        "accepted",
        "rejected",
        "ready",
        "cancelled",
        "in-progress",
        "on-hold",
        "failed",
        "completed",
        "entered-in-error",
    }
    assert {s.value for s in TaskStatus} == codes
    for move in domain.TRANSITIONS.values():
        assert move.target.value in codes
        assert {s.value for s in move.sources} <= codes


def test_expiry_and_failure_are_the_clinic_withdrawing_or_giving_up() -> None:
    expire = domain.transition(S.RECEIVED, "expire")
    assert (expire.target, expire.announces) == (S.CANCELLED, "expired")
    assert domain.BUSINESS_STATUS_AFTER["expire"] == BusinessStatus.EXPIRED
    fail = domain.transition(S.REQUESTED, "fail")
    assert (fail.target, fail.announces) == (S.FAILED, "failed")


def test_no_show_and_interim_notes_are_business_statuses_of_an_open_task() -> None:
    domain.check_business_update(S.IN_PROGRESS, BusinessStatus.NO_SHOW)
    domain.check_business_update(S.ACCEPTED, BusinessStatus.INTERIM_NOTE)
    with pytest.raises(domain.IllegalTransition):
        domain.check_business_update(S.ACCEPTED, BusinessStatus.NO_SHOW)
    with pytest.raises(domain.IllegalTransition):
        domain.check_business_update(S.COMPLETED, BusinessStatus.INTERIM_NOTE)


def test_deadlines_remind_after_72_hours_and_expire_48_hours_later() -> None:
    remind, expire = domain.answer_deadlines(NOW, 72, 48)
    assert remind == NOW + timedelta(hours=72)
    assert expire == NOW + timedelta(hours=120)


def test_retry_delays_double_up_to_the_cap_with_bounded_jitter() -> None:
    exact = [domain.retry_delay_seconds(n, 10, 1800, jitter=0) for n in range(1, 10)]
    assert exact == [10, 20, 40, 80, 160, 320, 640, 1280, 1800]
    for n in range(1, 12):
        delay = domain.retry_delay_seconds(n, 10, 1800)
        center = min(10 * 2 ** (n - 1), 1800)
        assert 0.9 * center <= delay <= 1.1 * center


def test_retries_stop_at_the_deadline_and_the_last_one_is_made_at_it() -> None:
    deadline = NOW + timedelta(hours=24)
    assert domain.next_attempt_at(NOW, deadline, 60) == NOW + timedelta(seconds=60)
    almost = deadline - timedelta(seconds=30)
    assert domain.next_attempt_at(almost, deadline, 1800) == deadline
    assert domain.next_attempt_at(deadline, deadline, 60) is None


def test_a_day_of_retries_at_the_defaults_is_a_few_dozen_attempts() -> None:
    moment, deadline, attempts = NOW, NOW + timedelta(hours=24), 0
    while True:
        attempts += 1
        following = domain.next_attempt_at(
            moment, deadline, domain.retry_delay_seconds(attempts, 10, 1800, jitter=0)
        )
        if following is None:
            break
        moment = following
    assert 50 <= attempts <= 60


def test_plan_progress_counts_sessions_not_no_shows_and_completes_with_every_component() -> None:
    massage = ComponentProgress("massage", sessions=2, per_week=1, completed=1, no_shows=3)
    pt = ComponentProgress("physical_therapy", sessions=6, per_week=2, completed=4, closed=True)
    progress = domain.plan_progress([massage, pt])
    assert [c["done"] for c in progress["components"]] == [False, True]
    assert progress["components"][0]["no_shows"] == 3
    assert progress["completed"] is False
    done = ComponentProgress("massage", sessions=2, per_week=1, completed=2)
    assert domain.plan_progress([done, pt])["completed"] is True
    assert domain.plan_progress([])["completed"] is False
