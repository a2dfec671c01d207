"""What a job does when it fires: re-read the state as it is now, decide (``domain.decide``,
pure), then wait (reschedule), drop (a ledger row saying why) or claim the ledger row,
which queues the text for a sender (``transmit``). A job that ran too late to run at all is dropped here too."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from services.reminders import db, domain, keywords, texts
from services.reminders.batch import Coalesced
from services.reminders.consent import consent_from, consent_of
from services.reminders.context import Reminders
from services.reminders.facts import client_location, message_by_key, rows_by, state_of
from services.reminders.jobs import session_job_id
from services.reminders.ledger import Recipient, claim, record_skip, skip
from services.reminders.planning import deferred, job_for, referral_job, referral_plan, reschedule
from services.reminders.rules import load_rules
from services.reminders.waitlist import waitlist_job_missed

log = structlog.get_logger(__name__)


def text_for_session(app: Reminders, kind: str, row: db.Session, client: db.Client) -> str:
    """A follow-up links its aftercare page; the other session texts the client's own page
    (the templates that have no place for it leave it out)."""
    link = app.links.aftercare_url(row.id) if kind == "followup" else row.manage_url or ""
    ctx = texts.TextContext(
        first_name=client.first_name,
        when=texts.local_when(row.start_at, ZoneInfo(row.location_timezone), client.language),
        location=row.location_name,
        phone=texts.display_phone(row.location_phone, app.settings.default_phone_region),
        link=link,
    )
    return texts.render(kind, ctx, client.language)


def text_for_referral(
    app: Reminders, notice: db.ReferralNotice, client: db.Client, location: str, phone: str
) -> str:
    """A neutral text with a signed link: nothing about the referral is named."""
    settings = app.settings
    ctx = texts.TextContext(
        first_name=client.first_name,
        location=location or settings.clinic_name,
        phone=texts.display_phone(phone or settings.clinic_phone, settings.default_phone_region),
        link=app.links.referral_url(notice.referral_id),
    )
    return texts.render("referral", ctx, client.language)


async def send_session_message(app: Reminders, session_id: str, rule_name: str) -> None:
    """A session job fired: re-read everything, then send, wait or drop.

    A re-plan while it runs may put the same job back (its ledger row was not committed
    yet); once the message is settled (sent, claimed elsewhere or dropped for good) that
    copy is removed, so no job waits in the store for a message that is done.
    """
    job_id = session_job_id(session_id, rule_name)
    app.firing.setdefault(job_id, False)  # a re-plan may have marked it before it started
    try:
        settled = await _fire_session_job(app, session_id, rule_name)
    finally:
        replanned = app.firing.pop(job_id, False)
    if settled and replanned:
        await app.scheduler.remove_jobs([job_id])


@dataclass(frozen=True)
class _Facts:
    """What a session job decides on, as read with the jobs that fired with it. ``rule``
    is None when the rule is gone or disabled; ``planned`` when the session no longer
    warrants the message."""

    row: db.Session
    #: The session as the domain sees it (``state_of(row)``).
    state: domain.SessionState
    rule: domain.Rule | None
    quiet: domain.QuietHours
    planned: domain.Planned | None
    client: db.Client | None
    consent: domain.Consent
    #: The ledger row of the planned message's key.
    existing: db.Message | None


#: A session job as it fired: the session's id and the rule's name.
_SessionJob = tuple[str, str]


async def _read_session_jobs(
    app: Reminders, session: AsyncSession, jobs: list[_SessionJob]
) -> list[_Facts | None]:
    """The facts of the session jobs that fired together (None: the session is unknown),
    one read per table for all of them (a scheduler pass fires hundreds at once; a
    transaction and four reads each was a fifth of a burst's time)."""
    rows: dict[str, db.Session] = await rows_by(
        session, db.Session.id, {session_id for session_id, _ in jobs}
    )
    document = await app.rules.current(session)
    clients: dict[str, db.Client] = await rows_by(
        session, db.Client.id, {row.client_id for row in rows.values()}
    )
    phones: dict[str, db.PhoneConsent] = await rows_by(
        session, db.PhoneConsent.phone, {c.phone for c in clients.values() if c.phone}
    )
    facts: list[_Facts | None] = []
    for session_id, rule_name in jobs:
        row = rows.get(session_id)
        if row is None:
            facts.append(None)
            continue
        rules = document.for_location(row.location_id)
        rule = rules.rule(rule_name)
        if rule is not None and not rule.enabled:
            rule = None
        client = clients.get(row.client_id)
        state = state_of(row)
        facts.append(
            _Facts(
                row=row,
                state=state,
                rule=rule,
                quiet=rules.quiet_hours,
                planned=domain.plan_one(state, rule, rules.quiet_hours) if rule else None,
                client=client,
                consent=consent_from(client, phones.get(client.phone) if client else None),
                existing=None,
            )
        )
    keys = {f.planned.key for f in facts if f is not None and f.planned is not None}
    existing: dict[str | None, db.Message] = await rows_by(session, db.Message.key, keys)
    return [
        replace(f, existing=existing.get(f.planned.key))
        if f is not None and f.planned is not None
        else f
        for f in facts
    ]


async def _fire_session_job(app: Reminders, session_id: str, rule_name: str) -> bool:
    """Send, wait or drop; True when the message is settled (nothing left to do)."""
    if not app.is_active() and not await app.lease_back():
        # The lease is gone: whoever holds it next re-adds this job (planning.repair_jobs).
        log.warning("job.not_active", job=session_job_id(session_id, rule_name))
        return False
    now = app.now()
    read: Coalesced[_SessionJob, _Facts | None] = app.reads.coalesced(
        "session-jobs", lambda session, jobs: _read_session_jobs(app, session, jobs)
    )
    facts = await read.run((session_id, rule_name))
    if facts is None:
        log.warning("job.unknown_session", session=session_id)
        return True
    if facts.rule is None:
        log.info("job.rule_gone", session=session_id, rule=rule_name)
        return False
    row, state, client, planned = facts.row, facts.state, facts.client, facts.planned
    existing = facts.existing
    decision = domain.decide(planned, facts.consent, now, state.zone, facts.quiet)
    body = (
        text_for_session(app, decision.planned.kind, row, client)
        if isinstance(decision, domain.Send) and client is not None
        else ""
    )
    to = Recipient(
        phone=client.phone if client else "",
        client_id=row.client_id,
        session_id=session_id,
        location_id=row.location_id,
    )
    if existing is not None and existing.status != "skipped":
        return True  # sent, or being sent: a later rule or quiet hours change nothing
    if isinstance(decision, domain.Defer) and planned is not None:
        log.info("message.deferred", session=session_id, rule=rule_name, until=decision.until)
        await reschedule(app, job_for(session_id, domain.replanned(planned, decision.until)))
        return False
    if isinstance(decision, domain.Skip):
        if decision.record and planned is not None and existing is None:
            await skip(app, planned, decision.reason, to)
        else:
            log.info("job.nothing_to_send", session=session_id, rule=rule_name)
        return decision.record
    if isinstance(decision, domain.Send) and body:
        # A sender takes it from the queue; the question it asks opens with the claim.
        await claim(
            app,
            decision.planned,
            body,
            existing,
            to,
            _question(app, decision.planned, to, state.start),
        )
        return True
    return False


def _question(
    app: Reminders, planned: domain.Planned, to: Recipient, start: datetime
) -> db.Question | None:
    """The question a text asks (C, or 0-10), opened in the transaction that claims it
    (as a row, so the claims waiting together open theirs in one insert)."""
    kind = keywords.question_of(planned.kind)
    if kind is None:
        return None
    now = app.now()
    return db.Question(
        id=planned.key,
        phone=to.phone,
        kind=kind,
        client_id=to.client_id,
        session_id=to.session_id,
        offer_id=None,
        asked_at=now,
        closes_at=keywords.question_closes(kind, now, start, None),
    )


async def send_referral_update(app: Reminders, notice_id: str) -> None:
    """A referral job fired: a neutral text with a signed link, nothing named."""
    if not app.is_active() and not await app.lease_back():
        return
    now = app.now()
    async with app.uow.read() as session:
        notice = await session.get(db.ReferralNotice, notice_id)
        if notice is None:
            return
        rules = await app.rules.current(session)
        planned = await referral_plan(session, app, rules, notice)
        location_id, name, phone, zone = await client_location(session, notice.client_id)
        quiet = rules.for_location(location_id).quiet_hours
        client = await session.get(db.Client, notice.client_id)
        consent = await consent_of(session, client)
        decision = domain.decide(planned, consent, now, zone or app.default_zone, quiet)
        existing = await message_by_key(session, planned.key)
        to = Recipient(
            phone=client.phone if client else "",
            client_id=notice.client_id,
            referral_id=notice.referral_id,
            location_id=location_id,
        )
        body = (
            text_for_referral(app, notice, client, name, phone)
            if isinstance(decision, domain.Send) and client is not None
            else ""
        )
    if isinstance(decision, domain.Defer):
        await reschedule(app, deferred(referral_job(notice, planned), decision.until))
    elif isinstance(decision, domain.Skip) and decision.record and existing is None:
        await skip(app, planned, decision.reason, to)
    elif body:
        await claim(app, planned, body, existing, to)


async def on_job_missed(app: Reminders, job_id: str, scheduled: datetime) -> None:
    """A job ran past its grace (the service was down too long): dropped, and logged."""
    head, rule = job_id.rsplit(":", 1)
    log.warning("job.missed", job=job_id, scheduled=scheduled.isoformat())
    if head.startswith("offer:"):
        await waitlist_job_missed(app, head.removeprefix("offer:"), rule)
        return
    now = app.now()
    async with app.uow.write() as session:
        if rule.startswith("referral_"):
            notice = await session.get(
                db.ReferralNotice, f"{head}:{rule.removeprefix('referral_')}"
            )
            if notice is None:
                return
            rules = await load_rules(session, app.settings)
            planned = await referral_plan(session, app, rules, notice)
            client = await session.get(db.Client, notice.client_id)
            to = Recipient(
                phone=client.phone if client else "",
                client_id=notice.client_id,
                referral_id=notice.referral_id,
            )
            await record_skip(session, planned, "missed", to, now)
            return
        row = await session.get(db.Session, head)
        if row is None:
            return
        ruleset = (await load_rules(session, app.settings)).for_location(row.location_id)
        found = ruleset.rule(rule)
        planned_for_session = (
            domain.plan_one(state_of(row), found, ruleset.quiet_hours) if found else None
        )
        if planned_for_session is None:
            return
        client = await session.get(db.Client, row.client_id)
        to = Recipient(
            phone=client.phone if client else "",
            client_id=row.client_id,
            session_id=row.id,
            location_id=row.location_id,
        )
        await record_skip(session, planned_for_session, "missed", to, now)
