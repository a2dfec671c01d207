"""The deadline jobs a sent referral gets, and the failures the API answers with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.referrals import domain
from services.referrals.deadlines import JOB_FUNC, jobs_for
from services.referrals.usecases.deadlines import DeadlinePlan


def test_a_referral_gets_a_reminder_that_may_run_late_until_expiry_and_an_expiry_always() -> None:
    sent = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
    plan = DeadlinePlan("r-1", sent + timedelta(hours=72), sent + timedelta(hours=120))
    reminder, expiry = jobs_for([plan], expire_after_hours=48)
    assert (reminder.id, reminder.run_date, reminder.args) == (
        "r-1:accept-reminder",
        plan.remind_at,
        ("accept-reminder", "r-1"),
    )
    assert reminder.misfire_grace_time == 48 * 3600
    assert (expiry.id, expiry.run_date, expiry.misfire_grace_time) == (
        "r-1:expire",
        plan.expire_at,
        None,
    )
    # Stored jobs name this function: renaming it would orphan every planned deadline.
    assert (
        {reminder.func, expiry.func} == {JOB_FUNC} == {"services.referrals.deadlines:deadline_due"}
    )


def test_broken_rules_answer_with_their_status_and_the_culprit_field() -> None:
    assert domain.PlanNotActive("p-1", "completed").status == 409
    assert domain.ReferralAlreadyLive("pa-1", "r-1", "acupuncture").status == 409
    assert domain.IllegalTransition("no").status == 409
    refused = domain.DiagnosisCodeRefused("M54 is a category")
    assert (refused.status, refused.field) == (422, "diagnosis_codes")
    assert str(refused) == "diagnosis_codes: M54 is a category"
    assert domain.UnknownPlan("p-9").field == "plan_id"
    assert domain.ConsentRequired().field == "consent_to_share"
