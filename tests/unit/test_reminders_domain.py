"""Reminders' pure rules: what a session warrants and when, quiet hours across DST, replies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.reminders import domain, keywords
from services.reminders.domain import QuietHours, Rule, RuleSet, SessionState
from services.reminders.rules import parse_rules_document

NY = ZoneInfo("America/New_York")
DAY = QuietHours.parse("09:00", "20:00")


def ny(y: int, m: int, d: int, h: int, minute: int = 0) -> datetime:
    return datetime(y, m, d, h, minute, tzinfo=NY).astimezone(UTC)


def state(**changes: object) -> SessionState:
    base: dict[str, object] = {
        "session_id": "s1",
        "version": 1,
        "status": "booked",
        "start": ny(2026, 6, 10, 14),
        "end": ny(2026, 6, 10, 15),
        "timezone": "America/New_York",
        "booked_at": ny(2026, 6, 1, 10),
        "changed_at": ny(2026, 6, 1, 10),
    }
    base.update(changes)
    return SessionState(**base)  # type: ignore[arg-type]


def by_rule(planned: list[domain.Planned]) -> dict[str, domain.Planned]:
    return {p.rule: p for p in planned}


# --- planning -------------------------------------------------------------------------


def test_a_booking_plans_confirmation_two_reminders_and_a_followup() -> None:
    planned = by_rule(domain.plan_session(state(), RuleSet(quiet_hours=DAY)))
    assert set(planned) == {"confirmation", "reminder_24h", "reminder_2h", "followup"}
    assert planned["confirmation"].run_at == ny(2026, 6, 1, 10)
    assert planned["reminder_24h"].run_at == ny(2026, 6, 9, 14)
    assert planned["reminder_2h"].run_at == ny(2026, 6, 10, 12)
    assert planned["followup"].run_at == ny(2026, 6, 10, 17)
    # A reminder is useless once the session started: that is its deadline (misfire grace).
    assert planned["reminder_2h"].deadline == ny(2026, 6, 10, 14)
    assert planned["reminder_2h"].grace_seconds == 2 * 3600


def test_a_reminder_due_before_the_booking_was_made_is_not_planned() -> None:
    late = state(booked_at=ny(2026, 6, 10, 9), changed_at=ny(2026, 6, 10, 9))
    planned = by_rule(domain.plan_session(late, RuleSet(quiet_hours=DAY)))
    assert "reminder_24h" not in planned, "the confirmation covers it"
    assert "reminder_2h" in planned


def test_reschedule_moves_reminders_and_plans_a_reschedule_message() -> None:
    moved = state(
        version=2,
        start=ny(2026, 6, 12, 11),
        end=ny(2026, 6, 12, 12),
        rescheduled_at=ny(2026, 6, 2, 10),
        rescheduled_version=2,
        changed_at=ny(2026, 6, 2, 10),
    )
    planned = by_rule(domain.plan_session(moved, RuleSet(quiet_hours=DAY)))
    assert planned["reminder_24h"].run_at == ny(2026, 6, 11, 11)
    assert planned["reschedule"].key == "s1:reschedule:v2"
    # The reminder's identity follows the start, so the moved one is a new message.
    assert (
        planned["reminder_24h"].key
        != by_rule(domain.plan_session(state(), RuleSet(quiet_hours=DAY)))["reminder_24h"].key
    )


def test_cancel_leaves_only_the_cancellation_message() -> None:
    cancelled = state(status="cancelled", cancelled_at=ny(2026, 6, 3, 10))
    planned = by_rule(domain.plan_session(cancelled, RuleSet(quiet_hours=DAY)))
    assert set(planned) == {"cancellation"}


def test_disabled_rules_and_location_overrides() -> None:
    defaults = RuleSet(quiet_hours=DAY)
    location = domain.effective_rules(
        defaults,
        (
            Rule("reminder_2h", "reminder", -120, enabled=False),
            Rule("reminder_72h", "reminder", -4320),
        ),
        QuietHours.parse("08:00", "21:00"),
    )
    planned = by_rule(domain.plan_session(state(), location))
    assert "reminder_2h" not in planned
    assert planned["reminder_72h"].run_at == ny(2026, 6, 7, 14)
    assert location.quiet_hours.start_minute == 8 * 60


def test_rule_validation_names_the_field() -> None:
    with pytest.raises(domain.InvalidRules, match=r"defaults\.rules\[0\]\.offset_minutes"):
        parse_rules_document(
            {
                "defaults": {
                    "rules": [{"name": "r", "kind": "reminder", "offset_minutes": 30}],
                    "quiet_hours": {"start": "09:00", "end": "20:00"},
                }
            }
        )
    with pytest.raises(domain.InvalidRules, match=r"defaults\.quiet_hours: start 21:00"):
        parse_rules_document(
            {"defaults": {"rules": [], "quiet_hours": {"start": "21:00", "end": "20:00"}}}
        )
    with pytest.raises(domain.InvalidRules, match="appears twice"):
        rule = {"name": "c", "kind": "confirmation", "offset_minutes": 0}
        parse_rules_document(
            {"defaults": {"rules": [rule, rule], "quiet_hours": {"start": "09:00", "end": "20:00"}}}
        )


# --- quiet hours ----------------------------------------------------------------------


def test_quiet_hours_move_an_early_message_to_nine_local() -> None:
    assert domain.next_allowed(ny(2026, 6, 10, 7, 30), NY, DAY) == ny(2026, 6, 10, 9)
    assert domain.next_allowed(ny(2026, 6, 10, 21), NY, DAY) == ny(2026, 6, 11, 9)
    assert domain.next_allowed(ny(2026, 6, 10, 19, 59), NY, DAY) == ny(2026, 6, 10, 19, 59)


def test_quiet_hours_across_spring_forward() -> None:
    # 2026-03-08: New York jumps from 02:00 EST to 03:00 EDT.
    late_saturday = datetime(2026, 3, 8, 2, 30, tzinfo=UTC)  # 21:30 EST on the 7th
    allowed = domain.next_allowed(late_saturday, NY, DAY)
    assert allowed == datetime(2026, 3, 8, 13, 0, tzinfo=UTC), "09:00 EDT is 13:00 UTC"
    assert allowed.astimezone(NY).hour == 9


def test_quiet_hours_across_fall_back() -> None:
    # 2026-11-01: New York goes back from 02:00 EDT to 01:00 EST.
    late_saturday = datetime(2026, 11, 1, 1, 30, tzinfo=UTC)  # 21:30 EDT on Oct 31
    allowed = domain.next_allowed(late_saturday, NY, DAY)
    assert allowed == datetime(2026, 11, 1, 14, 0, tzinfo=UTC), "09:00 EST is 14:00 UTC"


def test_a_2h_reminder_before_an_early_session_waits_until_nine() -> None:
    early = state(start=ny(2026, 6, 10, 9, 30), end=ny(2026, 6, 10, 10, 30))
    reminder = by_rule(domain.plan_session(early, RuleSet(quiet_hours=DAY)))["reminder_2h"]
    assert reminder.due == ny(2026, 6, 10, 7, 30)
    assert reminder.run_at == ny(2026, 6, 10, 9)
    assert reminder.useful


def test_waiting_that_makes_a_message_pointless_drops_it() -> None:
    dawn = state(start=ny(2026, 6, 10, 8, 30), end=ny(2026, 6, 10, 9, 30))
    reminder = by_rule(domain.plan_session(dawn, RuleSet(quiet_hours=DAY)))["reminder_2h"]
    assert not reminder.useful, "09:00 is after the 08:30 start"
    decision = domain.decide(reminder, "ok", reminder.due, NY, DAY)
    assert decision == domain.Skip("quiet_hours")


def test_wall_clock_inside_the_spring_forward_gap_moves_past_it() -> None:
    at = domain.wall_clock(datetime(2026, 3, 8).date(), 2 * 60 + 30, NY)
    assert at.astimezone(NY).hour == 3


# --- deciding when a job fires --------------------------------------------------------


def planned_reminder() -> domain.Planned:
    return by_rule(domain.plan_session(state(), RuleSet(quiet_hours=DAY)))["reminder_2h"]


def test_decide_sends_on_time_and_respects_consent() -> None:
    p = planned_reminder()
    assert domain.decide(p, "ok", p.run_at, NY, DAY) == domain.Send(p)
    assert domain.decide(p, "opted_out", p.run_at, NY, DAY) == domain.Skip("opted_out")
    assert domain.decide(p, "no_consent", p.run_at, NY, DAY) == domain.Skip("no_consent")


def test_decide_drops_what_would_arrive_after_the_start() -> None:
    p = planned_reminder()
    late = p.deadline + timedelta(minutes=1)
    assert domain.decide(p, "ok", late, NY, DAY) == domain.Skip("too_late")


def test_decide_waits_when_fired_early_or_in_quiet_hours() -> None:
    p = planned_reminder()
    assert domain.decide(p, "ok", p.run_at - timedelta(hours=1), NY, DAY) == domain.Defer(p.run_at)
    evening = by_rule(
        domain.plan_session(
            state(start=ny(2026, 6, 11, 10), end=ny(2026, 6, 11, 11)), RuleSet(quiet_hours=DAY)
        )
    )["reminder_24h"]
    # Fired (late) at 20:30 the evening before a 10:00 session: wait for 09:00.
    decision = domain.decide(evening, "ok", ny(2026, 6, 10, 20, 30), NY, DAY)
    assert decision == domain.Defer(ny(2026, 6, 11, 9))


def test_decide_when_the_state_no_longer_warrants_it() -> None:
    assert domain.decide(None, "ok", ny(2026, 6, 1, 10), NY, DAY) == domain.Skip(
        "no_longer_needed", record=False
    )


# --- replies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "intent"),
    [
        ("STOP", "opt_out"),
        ("stop", "opt_out"),
        (" Stop. ", "opt_out"),
        ("CANCEL", "opt_out"),  # Twilio's opt-out word: never "cancel my appointment"
        ("unsubscribe", "opt_out"),
        ("quit", "opt_out"),
        ("STOPALL", "opt_out"),
        ("REVOKE", "opt_out"),
        ("optout", "opt_out"),
        ("END", "opt_out"),
        ("START", "opt_in"),
        ("yes", "opt_in"),  # Twilio's opt-in word: never "confirm"
        ("UNSTOP", "opt_in"),
        ("HELP", "help"),
        ("info", "help"),
        ("C", "confirm"),
        ("c", "confirm"),
        ("c!", "confirm"),
        ("Confirm", "confirm"),
        ("R", "reschedule"),
        ("reschedule", "reschedule"),
        ("please stop texting me", "other"),
        ("C tomorrow?", "other"),
        ("", "other"),
        ("ok", "other"),
    ],
)
def test_reply_keywords(body: str, intent: str) -> None:
    assert keywords.parse_reply(body) == intent


# --- check-ins, offers, replies read against the open question ------------------------


def test_checkin_is_due_a_day_after_completion_and_moved_out_of_quiet_hours() -> None:
    rules = RuleSet(domain.DEFAULT_RULES, DAY)
    done = state(status="completed", completed_at=ny(2026, 6, 10, 21, 30))
    planned = by_rule(domain.plan_session(done, rules))["checkin"]
    assert planned.due == ny(2026, 6, 11, 21, 30)
    assert planned.run_at == ny(2026, 6, 12, 9), "21:30 is quiet: the next morning"
    assert planned.useful and planned.key == "s1:checkin"
    booked = state()
    assert "checkin" not in by_rule(domain.plan_session(booked, rules)), "only once completed"


def test_checkin_and_offer_rules_are_validated() -> None:
    with pytest.raises(domain.InvalidRules, match="offset_minutes"):
        domain.validate_rule(Rule("c", "checkin", -5), "r")
    with pytest.raises(domain.InvalidRules, match="offset_minutes"):
        domain.validate_rule(Rule("w", "waitlist_offer", 5), "r")
    assert RuleSet(domain.DEFAULT_RULES).allows("waitlist_offer")
    off = RuleSet((Rule("waitlist_offer", "waitlist_offer", 0, enabled=False),))
    assert not off.allows("waitlist_offer")


def test_an_offer_is_sent_now_or_never() -> None:
    offered = ny(2026, 6, 10, 19, 50)
    planned = domain.plan_offer("o1", offered, offered + timedelta(minutes=15))
    assert isinstance(domain.decide_now(planned, "ok", offered, NY, DAY), domain.Send)
    late = offered + timedelta(minutes=11)  # 20:01: quiet, and by 09:00 it is long gone
    assert domain.decide_now(planned, "ok", late, NY, DAY) == domain.Skip("quiet_hours")
    assert domain.decide_now(planned, "no_consent", offered, NY, DAY) == domain.Skip("no_consent")
    after = offered + timedelta(minutes=16)
    assert domain.decide_now(planned, "ok", after, NY, DAY) == domain.Skip("too_late")


@pytest.mark.parametrize(
    ("body", "score"),
    [("7", 7), (" 0 ", 0), ("10.", 10), ("7/10", 7), ("11", None), ("-1", None), ("7 ok", None)],
)
def test_a_checkin_answer_is_a_number_from_0_to_10(body: str, score: int | None) -> None:
    assert keywords.parse_score(body) == score


def test_replies_are_read_against_the_latest_open_question() -> None:
    assert keywords.parse_reply("book") == "book" and keywords.parse_reply("7") == "score"
    assert keywords.parse_reply("YES") == "opt_in", "Twilio's keyword keeps its meaning"
    assert keywords.read_reply("score", None) == "record_score"
    assert keywords.read_reply("book", "checkin") == "claim"
    assert keywords.read_reply("other", "checkin") == "checkin_help"
    assert keywords.read_reply("other", "offer") == "offer_help"
    assert keywords.read_reply("other", "confirm") == "other"
    assert keywords.read_reply("confirm", "checkin") == "confirm"
    assert keywords.read_reply("opt_out", "offer") == "opt_out"
    sent = ny(2026, 6, 10, 10)
    assert keywords.question_closes("checkin", sent, None, None) == sent + timedelta(hours=48)
    assert (
        keywords.question_of("reminder") == "confirm" and keywords.question_of("followup") is None
    )
