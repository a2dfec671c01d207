"""Pure rules of reminders: which messages a session warrants, when, and what a reply means.

Nothing here does I/O. Times are aware UTC; the location's zone is used only to apply
quiet hours, which are wall-clock times, so a DST change moves nothing by an hour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from shared.errors import DomainError

#: What reminders' events name as their source.
SOURCE = "reminders"

Kind = Literal[
    "confirmation",
    "reminder",
    "followup",
    "cancellation",
    "reschedule",
    "checkin",
    "waitlist_offer",
]
KINDS: tuple[Kind, ...] = (
    "confirmation",
    "reminder",
    "followup",
    "cancellation",
    "reschedule",
    "checkin",
    "waitlist_offer",
)
#: Kinds sent when something happens rather than at an offset from the session.
IMMEDIATE_KINDS = frozenset({"confirmation", "cancellation", "reschedule", "waitlist_offer"})
#: The texts that ask the client to reply C (or R) about a session.
CONFIRM_KINDS = frozenset({"confirmation", "reminder", "reschedule"})

#: Session statuses in which the client is still expected to come.
UPCOMING = frozenset({"booked", "confirmed"})
#: Statuses after which a follow-up makes sense (or may, once the session has ended).
FOLLOWUP_STATUSES = UPCOMING | {"checked_in", "completed"}
#: A follow-up that could not go out within this long after it was due is dropped.
FOLLOWUP_USEFUL_FOR = timedelta(hours=24)
#: A check-in that could not go out within this long after it was due is dropped.
CHECKIN_USEFUL_FOR = timedelta(hours=24)
#: A "that time was taken" text that could not go out within this long is dropped.
TAKEN_USEFUL_FOR = timedelta(hours=1)
#: A referral update that could not go out within this long is dropped.
REFERRAL_USEFUL_FOR = timedelta(days=7)
#: A job that fires this much before its time was planned for an older state: wait.
EARLY_TOLERANCE = timedelta(seconds=5)
#: How far back re-planning (rule changes, activation repair) looks.
REPAIR_WINDOW = timedelta(days=3)

RULE_NAME = re.compile(r"^[a-z0-9_]{1,40}$")
MINUTES_PER_DAY = 24 * 60


class InvalidRules(DomainError):
    """A rule set that cannot be applied (422); the message names the field."""


class ClientUnknown(Exception):
    """A referral names a client no booking event has told us about (yet): retried."""


# ---------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class Rule:
    """One planned message: its kind and its offset (see :func:`validate_rule`)."""

    name: str
    kind: Kind
    offset_minutes: int = 0
    enabled: bool = True


@dataclass(frozen=True)
class QuietHours:
    """The window in which texts may go out, in minutes after local midnight: [start, end)."""

    start_minute: int = 9 * 60
    end_minute: int = 20 * 60

    @classmethod
    def parse(cls, start: str, end: str) -> QuietHours:
        hours = cls(parse_hhmm(start, "quiet_hours.start"), parse_hhmm(end, "quiet_hours.end"))
        if not 0 <= hours.start_minute < hours.end_minute <= MINUTES_PER_DAY:
            raise InvalidRules(f"quiet_hours: start {start} must be before end {end}")
        return hours

    def as_dict(self) -> dict[str, str]:
        return {"start": format_hhmm(self.start_minute), "end": format_hhmm(self.end_minute)}


def parse_hhmm(text: str, what: str) -> int:
    """``"09:30"`` → 570. ``"24:00"`` is the end of the day."""
    match = re.fullmatch(r"(\d{2}):(\d{2})", text.strip())
    if not match:
        raise InvalidRules(f"{what}: {text!r} is not a time like 09:00")
    hours, minutes = int(match[1]), int(match[2])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise InvalidRules(f"{what}: {text!r} is not a time of day")
    return hours * 60 + minutes


def format_hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("confirmation", "confirmation", 0),
    Rule("reminder_24h", "reminder", -24 * 60),
    Rule("reminder_2h", "reminder", -2 * 60),
    Rule("followup", "followup", 2 * 60),
    Rule("cancellation", "cancellation", 0),
    Rule("reschedule", "reschedule", 0),
    Rule("checkin", "checkin", 24 * 60),
    Rule("waitlist_offer", "waitlist_offer", 0),
)


def validate_rule(rule: Rule, where: str) -> None:
    """Offsets count from the start for reminders (negative: before), from the end for
    follow-ups (zero or after), and are 0 for the kinds sent at once."""
    if not RULE_NAME.match(rule.name):
        raise InvalidRules(f"{where}.name: {rule.name!r} must be 1-40 of a-z, 0-9, _")
    if rule.kind not in KINDS:
        raise InvalidRules(f"{where}.kind: {rule.kind!r} is not one of {', '.join(KINDS)}")
    if rule.kind == "reminder" and rule.offset_minutes >= 0:
        raise InvalidRules(f"{where}.offset_minutes: a reminder comes before the start (< 0)")
    if rule.kind == "followup" and rule.offset_minutes < 0:
        raise InvalidRules(f"{where}.offset_minutes: a follow-up comes after the end (>= 0)")
    if rule.kind == "checkin" and rule.offset_minutes < 0:
        raise InvalidRules(
            f"{where}.offset_minutes: a check-in comes after the session is completed (>= 0)"
        )
    if rule.kind in IMMEDIATE_KINDS and rule.offset_minutes != 0:
        raise InvalidRules(f"{where}.offset_minutes: a {rule.kind} is sent at once (0)")
    if abs(rule.offset_minutes) > 60 * 24 * 30:
        raise InvalidRules(f"{where}.offset_minutes: at most 30 days")


@dataclass(frozen=True)
class RuleSet:
    """The rules in force at one location: the defaults with that location's overrides."""

    rules: tuple[Rule, ...] = DEFAULT_RULES
    quiet_hours: QuietHours = field(default_factory=QuietHours)

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)

    def allows(self, kind: Kind) -> bool:
        """Whether an enabled rule of ``kind`` exists (waitlist offers: none, none sent)."""
        return any(r.kind == kind for r in self.enabled)

    @property
    def enabled(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.enabled)


def check_unique(rules: tuple[Rule, ...], where: str) -> None:
    names = [r.name for r in rules]
    for name in names:
        if names.count(name) > 1:
            raise InvalidRules(f"{where}: rule {name!r} appears twice")


def effective_rules(
    defaults: RuleSet, overrides: tuple[Rule, ...] = (), quiet_hours: QuietHours | None = None
) -> RuleSet:
    """A location's rules: an override replaces the default rule of the same name, a new
    name adds a rule; the location's quiet hours replace the default ones."""
    by_name = {r.name: r for r in defaults.rules}
    for rule in overrides:
        by_name[rule.name] = rule
    return RuleSet(tuple(by_name.values()), quiet_hours or defaults.quiet_hours)


# ---------------------------------------------------------------------------------------
# Quiet hours


def wall_clock(day: date, minute: int, tz: ZoneInfo) -> datetime:
    """The instant a local clock in ``tz`` shows ``minute`` on ``day``, as aware UTC.

    A time that does not exist that day (the spring-forward gap) becomes the first
    instant after it; an ambiguous one (fall back) is its first occurrence.
    """
    if minute >= MINUTES_PER_DAY:
        return wall_clock(day + timedelta(days=1), minute - MINUTES_PER_DAY, tz)
    naive = datetime.combine(day, time(minute // 60, minute % 60))
    return naive.replace(tzinfo=tz).astimezone(UTC)


def next_allowed(moment: datetime, tz: ZoneInfo, quiet: QuietHours) -> datetime:
    """``moment`` if a text may go out then, else the start of the next allowed window."""
    local = moment.astimezone(tz)
    minute = local.hour * 60 + local.minute
    if quiet.start_minute <= minute < quiet.end_minute:
        return moment
    day = local.date() if minute < quiet.start_minute else local.date() + timedelta(days=1)
    return wall_clock(day, quiet.start_minute, tz)


# ---------------------------------------------------------------------------------------
# Sessions and the messages they warrant


@dataclass(frozen=True)
class SessionState:
    """What reminders knows about a session, from booking's events."""

    session_id: str
    version: int
    status: str
    start: datetime
    end: datetime
    timezone: str
    #: When it was booked (the confirmation's anchor); None if the booking was not seen.
    booked_at: datetime | None = None
    #: When its current start was set (booked or last moved): reminders due before are moot.
    changed_at: datetime | None = None
    rescheduled_at: datetime | None = None
    rescheduled_version: int | None = None
    cancelled_at: datetime | None = None
    #: When it was marked completed (the check-in's anchor).
    completed_at: datetime | None = None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class Planned:
    """One message a rule asks for. ``run_at`` is ``due`` moved out of quiet hours."""

    rule: str
    kind: Kind
    key: str
    due: datetime
    run_at: datetime
    deadline: datetime

    @property
    def useful(self) -> bool:
        """False when quiet hours push it past the point where it still helps."""
        return self.run_at <= self.deadline

    @property
    def grace_seconds(self) -> int:
        """How late the job may still run: up to the deadline (APScheduler's misfire grace)."""
        return max(1, int((self.deadline - self.run_at).total_seconds()))


def ledger_key(*parts: str) -> str:
    """The identity of one message: the same key is never sent twice."""
    return ":".join(parts)


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%MZ")


def plan_one(state: SessionState, rule: Rule, quiet: QuietHours) -> Planned | None:
    """The message ``rule`` asks for in ``state``, or None when it asks for none."""
    sid, name = state.session_id, rule.name
    offset = timedelta(minutes=rule.offset_minutes)
    if rule.kind == "confirmation":
        if state.status not in UPCOMING or state.booked_at is None:
            return None
        due, deadline, key = state.booked_at, state.start, ledger_key(sid, name)
    elif rule.kind == "reminder":
        if state.status not in UPCOMING:
            return None
        due, deadline = state.start + offset, state.start
        if state.changed_at is not None and due < state.changed_at:
            return None  # booked or moved after it was due: the confirmation says it all
        key = ledger_key(sid, name, stamp(state.start))
    elif rule.kind == "followup":
        if state.status not in FOLLOWUP_STATUSES:
            return None
        due = state.end + offset
        deadline, key = due + FOLLOWUP_USEFUL_FOR, ledger_key(sid, name, stamp(state.end))
    elif rule.kind == "checkin":
        if state.status != "completed" or state.completed_at is None:
            return None
        due = state.completed_at + offset
        deadline, key = due + CHECKIN_USEFUL_FOR, ledger_key(sid, name)
    elif rule.kind == "waitlist_offer":
        return None  # offers come from booking's waitlist events, not from sessions
    elif rule.kind == "cancellation":
        if state.status != "cancelled" or state.cancelled_at is None:
            return None
        due, deadline, key = state.cancelled_at, state.start, ledger_key(sid, name)
    else:  # reschedule
        if (
            state.status not in UPCOMING
            or state.rescheduled_version is None
            or state.rescheduled_at is None
        ):
            return None
        due, deadline = state.rescheduled_at, state.start
        key = ledger_key(sid, name, f"v{state.rescheduled_version}")
    run_at = next_allowed(due, state.zone, quiet)
    return Planned(name, rule.kind, key, due, run_at, deadline)


def plan_session(state: SessionState, rules: RuleSet) -> list[Planned]:
    """Every message the enabled rules ask for in ``state``."""
    planned = (plan_one(state, rule, rules.quiet_hours) for rule in rules.enabled)
    return [p for p in planned if p is not None]


def plan_referral(
    referral_id: str, status: str, happened_at: datetime, tz: ZoneInfo, quiet: QuietHours
) -> Planned:
    """A referral update: sent at once, inside quiet hours, while it is still news."""
    run_at = next_allowed(happened_at, tz, quiet)
    return Planned(
        rule=f"referral_{status}",
        kind="confirmation",
        key=ledger_key("referral", referral_id, status),
        due=happened_at,
        run_at=run_at,
        deadline=happened_at + REFERRAL_USEFUL_FOR,
    )


def plan_offer(offer_id: str, offered_at: datetime, expires_at: datetime) -> Planned:
    """A waitlist offer: sent at once, or not at all (see :func:`decide_now`)."""
    return Planned(
        rule="waitlist_offer",
        kind="waitlist_offer",
        key=ledger_key("offer", offer_id),
        due=offered_at,
        run_at=offered_at,
        deadline=expires_at,
    )


def plan_taken(offer_id: str, taken_at: datetime) -> Planned:
    """ "That time was taken": sent at once while it is still news."""
    return Planned(
        rule="waitlist_taken",
        kind="waitlist_offer",
        key=ledger_key("offer", offer_id, "taken"),
        due=taken_at,
        run_at=taken_at,
        deadline=taken_at + TAKEN_USEFUL_FOR,
    )


# ---------------------------------------------------------------------------------------
# What a job does when it fires


@dataclass(frozen=True)
class Send:
    planned: Planned


@dataclass(frozen=True)
class Skip:
    """Not sent. ``record`` says whether the message log keeps a row for it."""

    reason: str
    record: bool = True


@dataclass(frozen=True)
class Defer:
    until: datetime


Decision = Send | Skip | Defer
Consent = Literal["ok", "opted_out", "no_consent", "no_phone"]


def decide(
    planned: Planned | None, consent: Consent, now: datetime, tz: ZoneInfo, quiet: QuietHours
) -> Decision:
    """Whether a message whose job fired now goes out, waits or is dropped.

    ``planned`` is recomputed from the state as it is now (None: the state no longer
    warrants it). The order matters: too late beats everything, consent beats waiting.
    """
    if planned is None:
        return Skip("no_longer_needed", record=False)
    if now > planned.deadline:
        return Skip("too_late")
    if consent != "ok":
        return Skip(consent)
    if not planned.useful:
        return Skip("quiet_hours")
    if now < planned.run_at - EARLY_TOLERANCE:
        return Defer(planned.run_at)
    allowed = next_allowed(now, tz, quiet)
    if allowed > now:
        return Defer(allowed) if allowed <= planned.deadline else Skip("quiet_hours")
    return Send(planned)


def decide_now(
    planned: Planned, consent: Consent, now: datetime, tz: ZoneInfo, quiet: QuietHours
) -> Send | Skip:
    """A text that is worth sending now or never (a waitlist offer lasts minutes): quiet
    hours drop it rather than defer it, since by morning the slot is gone."""
    if now > planned.deadline:
        return Skip("too_late")
    if consent != "ok":
        return Skip(consent)
    if next_allowed(now, tz, quiet) > now:
        return Skip("quiet_hours")
    return Send(planned)


def replanned(planned: Planned, run_at: datetime) -> Planned:
    return replace(planned, run_at=run_at)
