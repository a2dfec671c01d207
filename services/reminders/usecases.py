"""Reminders' use cases: the service's state (:class:`Reminders`), its rules, the events
it applies from booking and referrals, consent, and what the HTTP API reads.

Planning (events to jobs) is in ``planning.py``, what a firing job does and the talk with
Twilio in ``delivery.py``, the answers to a phone's texts in ``replies.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.reminders import db, domain
from services.reminders.aftercare import AftercareLibrary
from services.reminders.batch import GroupCommit
from services.reminders.links import Links
from services.reminders.scheduler import GatedScheduler
from services.reminders.sender import Sender
from services.reminders.settings import RemindersSettings
from shared import events
from shared.db import transaction
from shared.gate import Gate
from shared.outbox import enqueue as _enqueue
from shared.timeutil import as_utc, utcnow

log = structlog.get_logger(__name__)

SOURCE = "reminders"
#: Set in a session's ``info`` when the transaction queued an event.
ANNOUNCED = "announced"
#: The rules' row for the defaults; the others are keyed by location id.
DEFAULT_SCOPE = "*"
#: How far back re-planning (rule changes, activation repair) looks.
REPAIR_WINDOW = timedelta(days=3)


class NotFound(Exception):
    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident} not found")


class ClientUnknown(Exception):
    """A referral names a client no booking event has told us about (yet): retried."""


@dataclass
class Reminders:
    """Everything a use case needs; the app's lifespan fills in the scheduler when active."""

    settings: RemindersSettings
    sessions: async_sessionmaker[AsyncSession]
    gate: Gate
    sender: Sender
    links: Links
    aftercare: AftercareLibrary
    clock: Callable[[], datetime] = utcnow
    on_commit: Callable[[], None] = lambda: None
    scheduler: GatedScheduler | None = None
    is_active: Callable[[], bool] = lambda: False
    in_flight: set[str] = field(default_factory=set)
    rules_cache: tuple[float, RulesDocument] | None = None
    planner_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    #: Small writes of concurrent tasks share a transaction (see batch.py).
    batch: GroupCommit = field(init=False)
    #: Jobs working at once: a thousand due together queue here, not on the database.
    job_slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.batch = GroupCommit(self.write)
        self.job_slots = asyncio.Semaphore(self.settings.sms_concurrency)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A serialized write; the outbox relay is woken if it queued an event."""
        async with transaction(self.sessions, write=True) as session:
            yield session
            announced = bool(session.info.get(ANNOUNCED))
        if announced:
            self.on_commit()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with transaction(self.sessions) as session:
            yield session

    def wake_planner(self) -> None:
        self.planner_wakeup.set()

    @property
    def default_zone(self) -> ZoneInfo:
        return ZoneInfo(self.settings.clinic_timezone)


def new_id() -> str:
    return str(uuid.uuid4())


async def enqueue(session: AsyncSession, event: events.CloudEvent[Any]) -> None:
    """Queue ``event`` in the transaction (outbox) and note that the relay has work."""
    await _enqueue(session, event)
    session.info[ANNOUNCED] = True


def _rule_from(data: dict[str, Any]) -> domain.Rule:
    return domain.Rule(
        name=str(data["name"]),
        kind=data["kind"],
        offset_minutes=int(data.get("offset_minutes", 0)),
        enabled=bool(data.get("enabled", True)),
    )


def _rule_dict(rule: domain.Rule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "kind": rule.kind,
        "offset_minutes": rule.offset_minutes,
        "enabled": rule.enabled,
    }


@dataclass(frozen=True)
class RulesDocument:
    """The defaults and each location's overrides, as stored and as the API shows them."""

    defaults: domain.RuleSet
    locations: dict[str, tuple[tuple[domain.Rule, ...], domain.QuietHours | None]]

    def for_location(self, location_id: str | None) -> domain.RuleSet:
        if location_id is None or location_id not in self.locations:
            return self.defaults
        rules, quiet = self.locations[location_id]
        return domain.effective_rules(self.defaults, rules, quiet)

    def as_dict(self) -> dict[str, Any]:
        return {
            "defaults": {
                "rules": [_rule_dict(r) for r in self.defaults.rules],
                "quiet_hours": self.defaults.quiet_hours.as_dict(),
            },
            "locations": {
                location_id: {
                    "rules": [_rule_dict(r) for r in rules],
                    "quiet_hours": quiet.as_dict() if quiet else None,
                }
                for location_id, (rules, quiet) in sorted(self.locations.items())
            },
        }


def default_rules(settings: RemindersSettings) -> domain.RuleSet:
    quiet = domain.QuietHours.parse(settings.quiet_hours_start, settings.quiet_hours_end)
    return domain.RuleSet(domain.DEFAULT_RULES, quiet)


def parse_rules_document(data: dict[str, Any]) -> RulesDocument:
    """Validate a rules document; :class:`domain.InvalidRules` names the field at fault."""

    def rules_of(items: Sequence[dict[str, Any]], where: str) -> tuple[domain.Rule, ...]:
        rules = tuple(_rule_from(item) for item in items)
        for i, rule in enumerate(rules):
            domain.validate_rule(rule, f"{where}[{i}]")
        domain.check_unique(rules, where)
        return rules

    def quiet_of(raw: dict[str, str] | None, where: str) -> domain.QuietHours | None:
        if raw is None:
            return None
        try:
            return domain.QuietHours.parse(raw["start"], raw["end"])
        except domain.InvalidRules as exc:
            raise domain.InvalidRules(f"{where}.{exc}") from None

    defaults_raw = data["defaults"]
    defaults = domain.RuleSet(
        rules_of(defaults_raw["rules"], "defaults.rules"),
        quiet_of(defaults_raw["quiet_hours"], "defaults") or domain.QuietHours(),
    )
    locations = {
        location_id: (
            rules_of(entry.get("rules") or [], f"locations.{location_id}.rules"),
            quiet_of(entry.get("quiet_hours"), f"locations.{location_id}"),
        )
        for location_id, entry in data.get("locations", {}).items()
    }
    return RulesDocument(defaults, locations)


async def load_rules(session: AsyncSession, settings: RemindersSettings) -> RulesDocument:
    """The stored rules; the built-in defaults (with the settings' quiet hours) until a PUT."""
    rows = (await session.scalars(select(db.RuleSetRow))).all()
    stored = {row.scope: row.document for row in rows}
    defaults = stored.pop(DEFAULT_SCOPE, None)
    if defaults is None:
        if not stored:
            return RulesDocument(default_rules(settings), {})
        defaults = RulesDocument(default_rules(settings), {}).as_dict()["defaults"]
    return parse_rules_document({"defaults": defaults, "locations": stored})


#: How long a job may use rules read by another job (a PUT replans within this anyway).
RULES_CACHE_SECONDS = 1.0


async def current_rules(app: Reminders, session: AsyncSession) -> RulesDocument:
    """The rules, read at most once a second: a burst of jobs does not parse them each."""
    loop_time = asyncio.get_running_loop().time()
    if app.rules_cache is not None and app.rules_cache[0] > loop_time:
        return app.rules_cache[1]
    document = await load_rules(session, app.settings)
    app.rules_cache = (loop_time + RULES_CACHE_SECONDS, document)
    return document


async def get_rules(app: Reminders) -> RulesDocument:
    async with app.read() as session:
        return await load_rules(session, app.settings)


async def put_rules(app: Reminders, data: dict[str, Any]) -> RulesDocument:
    """Store new rules and re-plan every session that may still get a message."""
    document = parse_rules_document(data)
    as_dict = document.as_dict()
    now = app.clock()
    async with app.write() as session:
        await session.execute(delete(db.RuleSetRow))
        session.add(
            db.RuleSetRow(scope=DEFAULT_SCOPE, document=as_dict["defaults"], updated_at=now)
        )
        for location_id, entry in as_dict["locations"].items():
            session.add(db.RuleSetRow(scope=location_id, document=entry, updated_at=now))
        await session.execute(
            update(db.Session)
            .where(db.Session.end_at > now - REPAIR_WINDOW)
            .values(change_seq=db.Session.change_seq + 1, plan_pending=True)
        )
    app.rules_cache = None
    app.wake_planner()
    log.info("rules.changed", locations=len(document.locations))
    return document


async def _learn_client(
    session: AsyncSession, client_id: str, first_name: str, phone: str, consent: bool, at: datetime
) -> None:
    row = await session.get(db.Client, client_id)
    if row is None:
        session.add(
            db.Client(
                id=client_id, first_name=first_name, phone=phone, sms_consent=consent, as_of=at
            )
        )
    elif row.as_of <= at:
        row.first_name, row.phone, row.sms_consent, row.as_of = first_name, phone, consent, at


async def apply_session_event(session: AsyncSession, event: events.CloudEvent[Any]) -> None:
    """Remember the session as the event describes it and mark it for (re)planning."""
    data: events.SessionEvent = event.data
    at = as_utc(event.time)
    client = data.client
    await _learn_client(session, client.id, client.first_name, client.phone, client.sms_consent, at)
    row = await session.get(db.Session, data.session_id)
    if row is not None and data.version <= row.version:
        log.info("session.stale_event", session=data.session_id, version=data.version)
        return
    if row is None:
        row = db.Session(id=data.session_id, change_seq=0, planned_seq=0, planned_jobs=[])
        session.add(row)
    row.client_id = client.id
    row.version = data.version
    row.status = data.status
    row.start_at = as_utc(data.start)
    row.end_at = as_utc(data.end)
    row.location_id = data.location.id
    row.location_name = data.location.name
    row.location_timezone = data.location.timezone
    row.location_phone = data.location.phone
    row.modality = data.service.modality
    row.updated_at = at
    if event.type == events.SESSION_BOOKED:
        row.booked_at = at
        row.changed_at = at
    elif event.type == events.SESSION_RESCHEDULED:
        row.rescheduled_at = at
        row.rescheduled_version = data.version
        row.changed_at = at
    elif event.type == events.SESSION_CANCELLED:
        row.cancelled_at = at
    row.change_seq = (row.change_seq or 0) + 1
    row.plan_pending = True


async def apply_client_event(session: AsyncSession, event: events.CloudEvent[Any]) -> None:
    data: events.ClientEvent = event.data
    c = data.client
    await _learn_client(session, c.id, c.first_name, c.phone, c.sms_consent, as_utc(event.time))


REFERRAL_UPDATES = frozenset({"accepted", "scheduled"})


async def apply_referral_event(session: AsyncSession, event: events.CloudEvent[Any]) -> None:
    """An accepted or scheduled referral becomes a text to plan for its client."""
    data: events.ReferralEvent = event.data
    status = event.type.rsplit(".", 1)[-1]
    if status not in REFERRAL_UPDATES:
        return
    notice_id = f"{data.referral_id}:{status}"
    if await session.get(db.ReferralNotice, notice_id) is not None:
        return
    if await session.get(db.Client, data.client_id) is None:
        raise ClientUnknown(f"client {data.client_id} of referral {data.referral_id} is unknown")
    session.add(
        db.ReferralNotice(
            id=notice_id,
            referral_id=data.referral_id,
            client_id=data.client_id,
            status=status,
            discipline=data.partner.discipline,
            happened_at=as_utc(event.time),
            plan_pending=True,
        )
    )


async def consent_of(session: AsyncSession, client: db.Client | None) -> domain.Consent:
    """No text without consent: the phone's own STOP beats everything; a START after the
    front desk's record counts as consent."""
    if client is None or not client.phone:
        return "no_phone"
    phone = await session.get(db.PhoneConsent, client.phone)
    if phone is not None and not phone.sms_consent:
        return "opted_out"
    if client.sms_consent:
        return "ok"
    if phone is not None and phone.sms_consent and phone.changed_at >= client.as_of:
        return "ok"
    return "no_consent"


async def set_consent(
    session: AsyncSession, phone: str, consent: bool, source: str, now: datetime
) -> bool:
    """Store a phone's consent; announce it when it changed. Returns whether it did."""
    row = await session.get(db.PhoneConsent, phone)
    if row is not None and row.sms_consent == consent:
        return False
    if row is None:
        session.add(
            db.PhoneConsent(phone=phone, sms_consent=consent, source=source, changed_at=now)
        )
    else:
        row.sms_consent, row.source, row.changed_at = consent, source, now
    await enqueue(
        session,
        events.make_event(
            events.CONSENT_CHANGED,
            SOURCE,
            events.ConsentChanged(phone=phone, sms_consent=consent, source=source),
        ),
    )
    log.info("consent.changed", phone=phone, sms_consent=consent, source=source)
    return True


async def client_location(
    session: AsyncSession, client_id: str
) -> tuple[str | None, str, str, ZoneInfo | None]:
    """The location of the client's next (else latest) session: id, name, phone, zone."""
    row = (
        await session.scalars(
            select(db.Session)
            .where(db.Session.client_id == client_id)
            .order_by(db.Session.start_at.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return None, "", "", None
    return row.location_id, row.location_name, row.location_phone, ZoneInfo(row.location_timezone)


async def list_messages(
    app: Reminders,
    *,
    session_id: str | None,
    phone: str | None,
    location_ids: frozenset[str] | None,
    limit: int,
) -> Sequence[db.Message]:
    async with app.read() as session:
        query = select(db.Message).order_by(db.Message.created_at.desc(), db.Message.id)
        if session_id:
            query = query.where(db.Message.session_id == session_id)
        if phone:
            query = query.where(db.Message.phone == phone)
        if location_ids is not None:
            query = query.where(db.Message.location_id.in_(location_ids))
        return (await session.scalars(query.limit(limit))).all()


async def session_for_page(app: Reminders, session_id: str) -> db.Session:
    async with app.read() as session:
        row = await session.get(db.Session, session_id)
        if row is None:
            raise NotFound("session", session_id)
        return row


async def referral_for_page(app: Reminders, referral_id: str) -> tuple[db.ReferralNotice, str, str]:
    """The latest update we have for the referral, and whom the client may call: the
    location of their latest session, else the clinic of the settings."""
    async with app.read() as session:
        notice = (
            await session.scalars(
                select(db.ReferralNotice)
                .where(db.ReferralNotice.referral_id == referral_id)
                .order_by(db.ReferralNotice.happened_at.desc())
                .limit(1)
            )
        ).first()
        if notice is None:
            raise NotFound("referral", referral_id)
        _, name, phone, _ = await client_location(session, notice.client_id)
    return notice, name or app.settings.clinic_name, phone or app.settings.clinic_phone
