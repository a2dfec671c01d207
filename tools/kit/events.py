"""CloudEvents of the contract, built from ``shared/events.py`` models with defaults.

A test or a benchmark that plays another service (booking's session and client events,
reminders' replies and consent changes, referrals' status changes) builds the event here
and publishes it with :func:`publish`, as that service's outbox relay would.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

import nats

from shared import events
from shared.timeutil import utcnow

Event = events.CloudEvent[Any]

RIVERSIDE = events.LocationRef(
    id="loc-riverside",
    name="Riverside Clinic",
    timezone="America/New_York",
    address="120 River St",
    phone="+17065550100",
)
THERAPIST = events.TherapistRef(id="t1", display_name="Alex")
LYMPHATIC_DRAINAGE = events.ServiceRef(
    id="svc1", name="Lymphatic drainage 60", modality="lymphatic_drainage", duration_minutes=60
)
MEDICAL_MASSAGE = events.ServiceRef(
    id="svc", name="Medical massage 60", modality="medical_massage", duration_minutes=60
)

#: The status a session has after each of its events.
STATUS_AFTER = {
    events.SESSION_BOOKED: "booked",
    events.SESSION_RESCHEDULED: "booked",
    events.SESSION_CANCELLED: "cancelled",
    events.SESSION_CONFIRMED: "confirmed",
    events.SESSION_CHECKED_IN: "checked_in",
    events.SESSION_COMPLETED: "completed",
    events.SESSION_NO_SHOW: "no_show",
}

_phone_numbers = itertools.count(uuid.uuid4().int % 10_000)


def new_phone(prefix: str = "+1212555") -> str:
    """A US number no other caller of this process has had (the Twilio sandbox keeps every
    thread, so two stories sharing a number would see each other's messages)."""
    return f"{prefix}{next(_phone_numbers) % 10_000:04d}"


def new_id() -> str:
    return str(uuid.uuid4())


def client_ref(
    client_id: str | None = None,
    *,
    first_name: str = "Maria",
    phone: str | None = None,
    sms_consent: bool = True,
) -> events.ClientRef:
    return events.ClientRef(
        id=client_id or new_id(),
        first_name=first_name,
        phone=phone or new_phone(),
        sms_consent=sms_consent,
    )


def session_event(
    event_type: str = events.SESSION_BOOKED,
    *,
    session_id: str | None = None,
    version: int = 1,
    status: str | None = None,
    start: datetime | None = None,
    duration: timedelta = timedelta(hours=1),
    client: events.ClientRef | None = None,
    therapist: events.TherapistRef = THERAPIST,
    location: events.LocationRef = RIVERSIDE,
    service: events.ServiceRef = LYMPHATIC_DRAINAGE,
    room_id: str = "room1",
    **extra: Any,
) -> Event:
    """A ``booking.session.*`` event; ``extra``: ``previous_start``, ``reason``, ..."""
    session_id = session_id or new_id()
    start = start or utcnow() + timedelta(days=3)
    data = events.SessionEvent(
        session_id=session_id,
        version=version,
        status=status or STATUS_AFTER[event_type],
        start=start,
        end=start + duration,
        client=client or client_ref(),
        therapist=therapist,
        location=location,
        service=service,
        room_id=room_id,
        **extra,
    )
    return events.make_event(event_type, "booking", data, subject=session_id)


def client_event(
    client_id: str | None = None,
    *,
    event_type: str = events.CLIENT_CREATED,
    first_name: str = "Maria",
    last_name: str = "Lopez",
    phone: str | None = None,
    date_of_birth: date | None = None,
    email: str | None = None,
    sms_consent: bool = True,
) -> Event:
    """``booking.client.created`` (or ``.updated``): the client data other services keep."""
    client_id = client_id or new_id()
    details = events.ClientDetails(
        id=client_id,
        first_name=first_name,
        last_name=last_name,
        phone=phone or new_phone(),
        sms_consent=sms_consent,
        **({"date_of_birth": date_of_birth} if date_of_birth is not None else {}),
        **({"email": email} if email is not None else {}),
    )
    return events.make_event(
        event_type, "booking", events.ClientEvent(client=details), subject=client_id
    )


def reply_event(
    phone: str,
    intent: Literal["confirm", "reschedule", "help", "other"] = "confirm",
    client_id: str | None = None,
    session_id: str | None = None,
) -> Event:
    """``reminders.reply.received``: what a client's text asked for."""
    data = events.ReplyReceived(
        phone=phone, client_id=client_id, session_id=session_id, intent=intent
    )
    return events.make_event(events.REPLY_RECEIVED, "reminders", data)


def consent_event(phone: str, sms_consent: bool = False, source: str = "STOP") -> Event:
    """``reminders.consent.changed``: a phone texted STOP (or START)."""
    data = events.ConsentChanged(phone=phone, sms_consent=sms_consent, source=source)
    return events.make_event(events.CONSENT_CHANGED, "reminders", data)


def referral_event(
    status: str,
    client_id: str,
    *,
    referral_id: str | None = None,
    plan_id: str = "p1",
    partner_id: str = "partner-1",
    discipline: str = "physical_therapy",
) -> Event:
    """``referrals.referral.<status>`` for one of the client's referrals."""
    data = events.ReferralEvent(
        referral_id=referral_id or new_id(),
        plan_id=plan_id,
        client_id=client_id,
        partner=events.PartnerRef(id=partner_id, discipline=discipline),
        status=status,
    )
    return events.make_event(events.referral_subject(status), "referrals", data)


@dataclass
class SessionStory:
    """One session's life told as booking's events, each with the next version."""

    phone: str = field(default_factory=new_phone)
    first_name: str = "Maria"
    last_name: str = "Lopez"
    start: datetime = field(default_factory=lambda: utcnow() + timedelta(days=3))
    duration: timedelta = timedelta(hours=1)
    session_id: str = field(default_factory=new_id)
    client_id: str = field(default_factory=new_id)
    consent: bool = True
    modality: str = "lymphatic_drainage"
    location: events.LocationRef = field(default_factory=lambda: RIVERSIDE.model_copy())
    version: int = 0
    status: str = "booked"

    def event(self, event_type: str, **extra: Any) -> Event:
        self.version += 1
        return session_event(
            event_type,
            session_id=self.session_id,
            version=self.version,
            status=self.status,
            start=self.start,
            duration=self.duration,
            client=client_ref(
                self.client_id,
                first_name=self.first_name,
                phone=self.phone,
                sms_consent=self.consent,
            ),
            location=self.location,
            service=LYMPHATIC_DRAINAGE.model_copy(update={"modality": self.modality}),
            **extra,
        )

    def booked(self) -> Event:
        self.status = "booked"
        return self.event(events.SESSION_BOOKED)

    def rescheduled(self, start: datetime) -> Event:
        previous, self.start, self.status = self.start, start, "booked"
        return self.event(events.SESSION_RESCHEDULED, previous_start=previous)

    def cancelled(self, reason: str = "client called") -> Event:
        self.status = "cancelled"
        return self.event(events.SESSION_CANCELLED, reason=reason)

    def client_event(self, event_type: str = events.CLIENT_CREATED) -> Event:
        return client_event(
            self.client_id,
            event_type=event_type,
            first_name=self.first_name,
            last_name=self.last_name,
            phone=self.phone,
            sms_consent=self.consent,
        )


async def publish(
    nats_url: str, *items: Event, msg_id: str | None = None, in_flight: int = 1
) -> float:
    """Publish to JetStream like a relay: ``Nats-Msg-Id`` is the event id (``msg_id`` gets a
    copy past JetStream's dedupe), each publish awaited for its PubAck, ``in_flight`` at a
    time (1 keeps their order). Returns the seconds spent publishing."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        started = time.perf_counter()
        for i in range(0, len(items), in_flight):
            await asyncio.gather(
                *(
                    js.publish(
                        e.type,
                        e.model_dump_json().encode(),
                        headers={"Nats-Msg-Id": msg_id or e.id},
                    )
                    for e in items[i : i + in_flight]
                )
            )
        return time.perf_counter() - started
    finally:
        await nc.close()
