"""The shared contract and helpers: what other services and operators rely on."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from shared import events
from shared.logging import redact
from shared.phones import InvalidPhone, mask_phone, normalize_phone
from shared.settings import DEV_ADMIN_API_KEY, ServiceSettings


def session_payload() -> events.SessionEvent:
    return events.SessionEvent(
        session_id="s1",
        version=1,
        status="booked",
        start=datetime(2026, 12, 1, 15, tzinfo=UTC),
        end=datetime(2026, 12, 1, 16, tzinfo=UTC),
        client=events.ClientRef(
            id="c1", first_name="Maria", phone="+12125550199", sms_consent=True
        ),
        therapist=events.TherapistRef(id="t1", display_name="Ana"),
        location=events.LocationRef(
            id="l1", name="Downtown", timezone="America/New_York", address="1 Main", phone="+1"
        ),
        service=events.ServiceRef(
            id="v1", name="Medical massage 60", modality="medical_massage", duration_minutes=60
        ),
        room_id="r1",
    )


def test_an_event_round_trips_as_a_cloudevent() -> None:
    event = events.make_event(events.SESSION_BOOKED, "booking", session_payload())
    wire = json.loads(event.model_dump_json())
    assert wire["specversion"] == "1.0"
    assert wire["type"] == "booking.session.booked"
    assert wire["datacontenttype"] == "application/json"
    parsed = events.parse_event(event.model_dump_json().encode())
    assert parsed.id == event.id
    assert isinstance(parsed.data, events.SessionEvent)
    assert parsed.data.client.first_name == "Maria"


def test_a_newer_producer_may_add_fields() -> None:
    event = events.make_event(events.SESSION_BOOKED, "booking", session_payload())
    wire = json.loads(event.model_dump_json())
    wire["data"]["loyalty_tier"] = "gold"
    parsed = events.parse_event(json.dumps(wire).encode())
    assert parsed.data.session_id == "s1"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"specversion": "1.0"}',
        b'{"specversion":"1.0","id":"x","source":"s","type":"booking.session.booked","data":{"session_id":"s"}}',
        b'{"specversion":"1.0","id":"x","source":"s","type":"no.such.type","data":{}}',
    ],
)
def test_malformed_events_are_refused_with_a_reason(raw: bytes) -> None:
    with pytest.raises((ValidationError, ValueError)):
        events.parse_event(raw)


def test_an_event_must_carry_the_payload_its_type_promises() -> None:
    with pytest.raises(TypeError, match="SessionEvent"):
        events.make_event(
            events.SESSION_BOOKED,
            "booking",
            events.ConsentChanged(phone="+1", sms_consent=True, source="x"),
        )


def test_streams_cover_every_subject_of_the_contract() -> None:
    for subject in events.PAYLOAD_TYPES:
        assert events.stream_for(subject) in events.STREAM_SUBJECTS
        # JetStream refuses two streams that store one subject.
        stores = [
            stream
            for stream, patterns in events.STREAM_SUBJECTS.items()
            if any(events.subject_matches(p, subject) for p in patterns)
        ]
        assert len(stores) == 1, f"{subject} in {stores}"
    assert events.stream_for(events.SMS_DUE) == events.REMINDERS_DUE_STREAM
    assert events.dlq_subject("REMINDERS", "booking-replies") == "dlq.REMINDERS.booking-replies"


def test_phones_are_normalized_to_e164() -> None:
    assert normalize_phone("(212) 555-0199") == "+12125550199"
    assert normalize_phone("+44 20 7946 0958") == "+442079460958"
    with pytest.raises(InvalidPhone, match="12"):
        normalize_phone("12")


def test_logs_mask_phones_and_drop_secrets_and_bodies() -> None:
    event = redact(
        None, "info", {"event": "sms", "phone": "+12125550199", "body": "Hi Maria", "password": "x"}
    )
    assert event["phone"] == "+121******99"
    assert event["body"] == event["password"] == "[redacted]"
    assert mask_phone("+12125550199").endswith("99")


def test_production_refuses_the_documented_dev_key() -> None:
    with pytest.raises(ValidationError, match="ADMIN_API_KEY"):
        ServiceSettings(app_env="production", admin_api_key=DEV_ADMIN_API_KEY)
    assert (
        ServiceSettings(
            app_env="production",
            admin_api_key="a-real-secret",
            nats_url="nats://booking:a-real-password@nats:4222",
        ).app_env
        == "production"
    )


def test_subject_filters_follow_nats_wildcards() -> None:
    assert events.subject_matches("booking.session.*", "booking.session.booked")
    assert events.subject_matches("booking.>", "booking.session.booked")
    assert not events.subject_matches("booking.session.*", "booking.session")
    assert not events.subject_matches("booking.*", "booking.session.booked")
    assert not events.subject_matches("booking.client.>", "booking.client")
    assert events.subject_matches("reminders.reply.received", "reminders.reply.received")


def test_a_subscription_must_cover_subjects_of_its_one_payload() -> None:
    with pytest.raises(ValueError, match="does not carry"):
        events.Subscription("x", "all", "BOOKING", "booking.>", events.SessionEvent, "")
    with pytest.raises(ValueError, match="matches no subject"):
        events.Subscription("x", "none", "BOOKING", "booking.nothing.*", events.SessionEvent, "")
    with pytest.raises(ValueError, match="not in stream"):
        events.Subscription("x", "s", "REMINDERS", "booking.session.*", events.SessionEvent, "")
    assert events.REMINDERS_SESSIONS.durable == "reminders-sessions"
    assert events.SESSION_NO_SHOW in events.REMINDERS_SESSIONS.subjects


def test_a_consumer_built_from_a_subscription_carries_its_payload() -> None:
    from shared.consumers import Consumer

    async def on_session(_session: Any, _event: events.CloudEvent[events.SessionEvent]) -> None:
        return None

    consumer = Consumer.of(events.REFERRALS_SESSIONS, on_session, max_deliver=3)
    assert (consumer.durable, consumer.stream, consumer.subject) == (
        "referrals-sessions",
        "BOOKING",
        "booking.session.*",
    )
    assert consumer.payload is events.SessionEvent and consumer.max_deliver == 3


def test_an_older_consumer_ignores_nested_fields_a_newer_producer_added() -> None:
    event = events.make_event(events.SESSION_BOOKED, "booking", session_payload())
    wire = json.loads(event.model_dump_json())
    wire["data"]["client"]["pronouns"] = "she/her"
    parsed = events.parse_event(json.dumps(wire).encode())
    assert parsed.data.client.first_name == "Maria"
    with pytest.raises(ValidationError, match="pronouns"):
        events.SessionEvent.model_validate(wire["data"])  # a producer may not send it
