"""Each service's ``GET /asyncapi.json`` against the AsyncAPI 3.0 schema, the contract's
event table (../shared/design/CONTRACT.md), the "listens to" column of ARCHITECTURE.md,
and the events the services' own builders make.

The schema is the AsyncAPI Initiative's own, vendored in tests/data/asyncapi (README).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi import FastAPI

from shared import events
from shared.events import CloudEvent, make_event, parse_event, subject_matches

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests" / "data" / "asyncapi" / "asyncapi-3.0.0.schema.json"
DESIGN = ROOT.parent / "shared" / "design"
SERVICES = ("booking", "reminders", "referrals")
#: The AsyncAPI 3.0 rule for the keys of ``components`` maps (the JSON Schema omits it).
COMPONENT_KEY = re.compile(r"^[a-zA-Z0-9.\-_]+$")


# -- the documents, from each service's app built but not started ---------------------------


def build_app(service: str, tmp: Path) -> FastAPI:
    database = f"sqlite+aiosqlite:///{tmp / service}.db"
    nats_url = "nats://observer:secret@127.0.0.1:4222"
    if service == "booking":
        from services.booking.app import create_app as booking_app
        from services.booking.settings import BookingSettings

        return booking_app(BookingSettings(booking_database_url=database, nats_url=nats_url))
    if service == "reminders":
        from services.reminders.app import create_app as reminders_app
        from services.reminders.settings import RemindersSettings

        return reminders_app(RemindersSettings(reminders_database_url=database, nats_url=nats_url))
    from services.referrals.app import create_app as referrals_app
    from services.referrals.settings import ReferralsSettings

    return referrals_app(ReferralsSettings(referrals_database_url=database, nats_url=nats_url))


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FastAPI]:
    tmp = tmp_path_factory.mktemp("asyncapi")
    return {service: build_app(service, tmp) for service in SERVICES}


@pytest.fixture(scope="module")
async def documents(apps: dict[str, FastAPI]) -> dict[str, dict[str, Any]]:
    found = {}
    for service, app in apps.items():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            answer = await client.get("/asyncapi.json")
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("application/json")
        found[service] = answer.json()
    return found


def sent(doc: dict[str, Any]) -> set[str]:
    return {op["channel"]["$ref"].rsplit("/", 1)[1] for op in _ops(doc, "send")}


def received(doc: dict[str, Any]) -> set[str]:
    return {op["channel"]["$ref"].rsplit("/", 1)[1] for op in _ops(doc, "receive")}


def _ops(doc: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [op for op in doc["operations"].values() if op["action"] == action]


def resolve(doc: dict[str, Any], node: Any) -> Any:
    """Follow local ``$ref``s, and the ``allOf``/``anyOf`` wrappers pydantic writes."""
    while isinstance(node, dict):
        if "$ref" in node:
            ref = node["$ref"]
            assert ref.startswith("#/"), ref
            node = doc
            for part in ref[2:].split("/"):
                node = node[part]
        elif "allOf" in node:
            node = node["allOf"][0]
        elif "anyOf" in node:
            node = next(n for n in node["anyOf"] if n.get("type") != "null")
        else:
            return node
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


# -- valid AsyncAPI 3.0 -------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_the_document_validates_as_asyncapi_3(
    documents: dict[str, dict[str, Any]], service: str
) -> None:
    doc = documents[service]
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message[:200]}" for e in errors[:5]]
    assert doc["asyncapi"] == "3.0.0"
    for kind, entries in doc["components"].items():
        bad = [key for key in entries if not COMPONENT_KEY.match(key)]
        assert not bad, f"components.{kind} keys the spec does not allow: {bad}"
    for ref in set(refs(doc)):
        assert resolve(doc, {"$ref": ref}) is not None, ref


def test_the_schema_is_strict_enough_to_catch_a_broken_document(
    documents: dict[str, dict[str, Any]],
) -> None:
    """The vendored schema really checks: an operation with an unknown action fails."""
    doc = json.loads(json.dumps(documents["booking"]))
    next(iter(doc["operations"].values()))["action"] = "publish"  # AsyncAPI 2 wording
    schema = json.loads(SCHEMA.read_text())
    assert list(jsonschema.Draft7Validator(schema).iter_errors(doc))


def test_no_credentials_of_the_nats_url_are_shown(documents: dict[str, dict[str, Any]]) -> None:
    for doc in documents.values():
        assert doc["servers"] == {
            "nats": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": doc["servers"]["nats"]["description"],
            }
        }
        assert "secret" not in json.dumps(doc)


# -- the contract's tables ----------------------------------------------------------------


def _design(name: str) -> str:
    path = DESIGN / name
    if not path.exists():
        pytest.skip(f"{path} is not beside the repository")
    return path.read_text()


def _table_rows(markdown: str, heading: str) -> list[list[str]]:
    section = markdown.split(heading, 1)[1]
    section = re.split(r"\n## ", section, maxsplit=1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not re.match(r"^\|[\s\-|]+\|$", line):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip("|"))])
    return rows[1:]  # without the header


def _subjects(cell: str) -> list[str]:
    """`booking.session.booked`, `.rescheduled` → both subjects in full."""
    found: list[str] = []
    for token in re.findall(r"`([^`]+)`", cell):
        if token.startswith(".") and found:
            found.append(found[-1].rsplit(".", 1)[0] + token)
        elif "." in token:
            found.append(token)
    return found


def _fields(text: str) -> dict[str, Any] | None:
    """``a, b (note); c {d, e}; f: x\\|y`` → {a: None, b: None, c: {d, e}, f: {x, y}};
    ``None`` when the cell is prose rather than a list of fields."""
    pieces, depth, current = [], 0, ""
    for char in text:
        depth += char == "{"
        depth -= char == "}"
        if char in ",;" and depth == 0:
            pieces.append(current)
            current = ""
        else:
            current += char
    pieces.append(current)
    found: dict[str, Any] = {}
    for piece in (re.sub(r"\([^)]*\)", "", p).strip() for p in pieces):
        if "{" in piece:
            name, inner = piece.split("{", 1)
            found[name.strip()] = _fields(inner.rsplit("}", 1)[0])
        elif ":" in piece:
            name, values = piece.split(":", 1)
            found[name.strip()] = set(re.split(r"\\\|", values.strip()))
        else:
            name = piece
            found[name] = None
        if not re.fullmatch(r"[a-z_0-9]+", name.strip()):
            return None
    return found


@cache
def contract_events() -> dict[str, dict[str, Any] | None]:
    """Every subject of the contract's Events table and its minimum fields (None: prose)."""
    table: dict[str, dict[str, Any] | None] = {}
    for cells in _table_rows(_design("CONTRACT.md"), "## Events"):
        if "intents also" in cells[0]:
            continue  # read by test_reply_intents_of_the_contract_are_declared
        for subject in _subjects(cells[0]):
            table[subject] = _fields(cells[1])
    return table


def listens_to() -> dict[str, list[str]]:
    """ARCHITECTURE.md's "listens to" column: service → subject patterns."""
    rows = _table_rows(_design("ARCHITECTURE.md"), "## Services and what each owns")
    return {cells[0]: re.findall(r"`([^`]+)`", cells[-1]) for cells in rows}


def test_the_contract_table_was_read() -> None:
    table = contract_events()
    assert len(table) >= 30 and events.SESSION_BOOKED in table
    assert table[events.SESSION_BOOKED] and "client" in table[events.SESSION_BOOKED]
    assert set(listens_to()) == set(SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_the_document_names_every_subject_the_contract_gives_the_service(
    documents: dict[str, dict[str, Any]], service: str
) -> None:
    doc = documents[service]
    publishes = {s for s in contract_events() if s.split(".", 1)[0] == service}
    assert publishes <= sent(doc), f"not published: {sorted(publishes - sent(doc))}"
    patterns = listens_to()[service]
    consumes = {s for s in contract_events() if any(subject_matches(p, s) for p in patterns)}
    assert all(any(subject_matches(p, s) for s in consumes) for p in patterns), patterns
    assert consumes <= received(doc), f"not consumed: {sorted(consumes - received(doc))}"
    assert set(doc["channels"]) >= publishes | consumes


def _check_fields(doc: dict[str, Any], schema: Any, wanted: dict[str, Any], where: str) -> None:
    properties = resolve(doc, schema)["properties"]
    for name, inner in wanted.items():
        assert name in properties, f"{where} lacks {name}"
        if isinstance(inner, dict):
            _check_fields(doc, properties[name], inner, f"{where}.{name}")
        elif isinstance(inner, set):
            enum = resolve(doc, properties[name])
            values = set(enum.get("enum", [enum.get("const")]))
            assert inner <= values, f"{where}.{name} lacks {sorted(inner - values)}"


@pytest.mark.parametrize("service", SERVICES)
def test_each_payload_schema_carries_the_contract_fields(
    documents: dict[str, dict[str, Any]], service: str
) -> None:
    doc = documents[service]
    for subject in doc["channels"]:
        wanted = contract_events().get(subject)
        if not wanted:
            continue  # not in the contract, or described in prose
        message = doc["components"]["messages"][subject]
        data = resolve(doc, message["payload"])["properties"]["data"]
        _check_fields(doc, data, wanted, f"{service}: {subject}")


def test_reply_intents_of_the_contract_are_declared() -> None:
    rows = _table_rows(_design("CONTRACT.md"), "## Events")
    (extra,) = [cells for cells in rows if "intents also" in cells[0]]
    intents = set(re.findall(r"`([a-z_]+)`", extra[1]))
    schema = events.ReplyReceived.model_json_schema()
    assert intents <= set(schema["properties"]["intent"]["enum"])
    assert "offer_id" in schema["properties"]


# -- what the services really send ---------------------------------------------------------


def sent_by_the_services() -> list[CloudEvent[Any]]:
    """Events built by the services' own (pure) builders, every optional branch taken."""
    from services.booking import db as booking_db
    from services.booking.usecases import changes as booking_changes
    from services.booking.usecases import clients as booking_clients
    from services.booking.usecases import sessions as booking
    from services.referrals import db as referrals_db
    from services.referrals.queries import plan_progress
    from services.referrals.usecases import lifecycle as referrals
    from services.reminders import db as reminders_db
    from services.reminders.status import sms_event

    start = datetime(2026, 12, 1, 15, tzinfo=UTC)
    client = booking_db.Client(
        id="c1",
        first_name="Maria",
        last_name="Lopez",
        date_of_birth=date(1980, 2, 3),
        phone="+12125550199",
        email="maria@example.com",
        sms_consent=True,
    )
    row = booking_db.Session(
        id="s1",
        version=3,
        status="cancelled",
        start_at=start,
        end_at=start + timedelta(hours=1),
        cancel_reason="sick",
        late_cancel=True,
        room_id="r1",
    )
    row.client = client
    row.therapist = booking_db.Therapist(id="t1", name="Ana")
    row.location = booking_db.Location(
        id="l1", name="Downtown", timezone="America/New_York", address="1 Main", phone="+1212"
    )
    row.treatment = booking_db.Treatment(
        id="v1", name="Medical massage 60", modality="medical_massage", duration_minutes=60
    )
    row.location.min_notice_minutes, row.location.horizon_days = 60, 90
    row.location.late_cancel_hours, row.location.slot_step_minutes = 24, 15
    row.location.rooms = [booking_db.Room(id="r1", location_id="l1", name="Room 1", active=False)]
    therapist = booking_db.Therapist(id="t1", name="Ana", modalities=["medical_massage"])
    therapist.active = True
    therapist.working_hours = [
        booking_db.WorkingHours(
            location_id="l1", weekday=0, start="09:00", end="17:00", effective_from=date(1970, 1, 1)
        )
    ]
    therapist.weeks = []
    referral = referrals_db.Referral(
        id="r1",
        plan_id="p1",
        partner_id="pa1",
        client_id="c1",
        urgency="routine",
        task_status="requested",
        status="declined",
        business_status="declined",
        status_reason="no capacity",
        first_visit_at=start,
        expire_at=start,
        version=4,
    )
    partner = referrals_db.Partner(id="pa1", discipline="acupuncture")
    referral_client = referrals_db.Client(
        id="c1", first_name="Maria", last_name="Lopez", phone="+12125550199", sms_consent=True
    )
    plan = referrals_db.Plan(id="p1", client_id="c1", status="active", version=2)
    plan.components = [
        referrals_db.PlanComponent(
            discipline="acupuncture",
            sessions=6,
            per_week=1,
            partner_id="pa1",
            completed_sessions=2,
            no_shows=1,
        )
    ]
    message = reminders_db.Message(
        id="m1", session_id="s1", rule="reminder-24h", provider_sid="SM1", error_code=30003
    )
    return [
        make_event(events.SESSION_CANCELLED, "booking", booking.session_event(row)),
        make_event(
            events.SESSION_RESCHEDULED,
            "booking",
            booking.session_event(
                row,
                previous_start=start - timedelta(days=1),
                manage_url="https://book.example/m/token",
            ),
        ),
        make_event(
            events.CLIENT_UPDATED,
            "booking",
            events.ClientEvent(client=booking_clients.client_details(client)),
        ),
        make_event(
            events.LOCATION_UPDATED, "booking", booking_changes.location_event(row.location)
        ),
        make_event(
            events.THERAPIST_UPDATED,
            "booking",
            booking_changes.therapist_event(therapist, start.date()),
        ),
        make_event(
            events.referral_subject("declined"),
            "referrals",
            referrals.referral_payload(referral, partner, referral_client),
        ),
        make_event(
            events.PLAN_UPDATED,
            "referrals",
            events.PlanEvent(
                plan_id=plan.id,
                client_id=plan.client_id,
                progress=plan_progress(plan),  # type: ignore[arg-type]
                status=plan.status,
                version=plan.version,
            ),
        ),
        sms_event(events.SMS_FAILED, message),
    ]


def test_what_the_services_send_is_declared_and_described(
    documents: dict[str, dict[str, Any]],
) -> None:
    built = sent_by_the_services()
    by_type = {event.type: event.data for event in built}
    referral = by_type[events.referral_subject("declined")]
    assert referral.client is not None and referral.respond_by is not None  # branches taken
    assert by_type[events.SESSION_RESCHEDULED].manage_url is not None
    assert by_type[events.LOCATION_UPDATED].rooms[0].active is False
    assert by_type[events.THERAPIST_UPDATED].working_hours[0].start == "09:00"
    for event in built:
        doc = documents[event.type.split(".", 1)[0]]
        wire = json.loads(event.model_dump_json())
        schema = {**doc, "$ref": f"#/components/messages/{event.type}/payload"}
        errors = list(jsonschema.Draft7Validator(schema).iter_errors(wire))
        assert not errors, f"{event.type}: {errors[0].message}"
        # and a consumer reads back exactly what was sent
        assert parse_event(event.model_dump_json().encode()).data == event.data


def test_a_field_no_model_declares_is_refused_where_the_event_is_built() -> None:
    with pytest.raises(ValueError, match="loyalty_tier"):
        events.ConsentChanged(phone="+1", sms_consent=True, source="STOP", loyalty_tier="gold")  # type: ignore[call-arg]
    for model in {*events.PAYLOAD_TYPES.values()}:
        assert model.model_config.get("extra") == "forbid", model


# -- the declared subscriptions are the consumers the services run -------------------------


#: Declared for this round's features; each consumer starts running as its feature lands.
NOT_RUNNING_YET: set[str] = set()


@pytest.mark.parametrize("service", SERVICES)
def test_every_running_consumer_is_a_declared_subscription(
    apps: dict[str, FastAPI], service: str
) -> None:
    declared = {s.durable: s for s in events.subscriptions(service)}
    running = {c.durable: c for c in apps[service].state.messaging.consumers}
    for durable, consumer in running.items():
        assert durable in declared, f"{durable} is not declared in shared.events"
        subscription = declared[durable]
        assert (consumer.stream, consumer.subject) == (subscription.stream, subscription.subject)
    assert set(declared) - set(running) <= NOT_RUNNING_YET


def test_resources_in_events_carry_no_ics_token() -> None:
    for model in (events.LocationEvent, events.TherapistEvent):
        assert not [name for name in model.model_fields if "ics" in name], model
