"""The system as `make run` starts it: a separate launcher process, NATS, the services, the seed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import icalendar
import nats
import pytest

from shared.natsd import port_open
from tests.make_run_support import launch, stop
from tests.support import EventTap

ADMIN = "e2e-admin-key"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    running = launch(tmp_path_factory.mktemp("var"), ADMIN, scrub=("TWILIO_", "SANDBOX_"))
    try:
        yield {
            "booking": running.url("booking"),
            "nats": running.admin_nats_url,
            "log": running.log,
        }
    finally:
        stop(running.process)


def test_a_killed_launcher_leaves_no_server_running(tmp_path: Path) -> None:
    """kill -9 of ``make run`` (the OOM killer, a closed terminal's hard kill) stops NATS,
    the sandbox and the three services too: none is left holding its port and database."""
    running = launch(tmp_path, ADMIN, scrub=("TWILIO_", "SANDBOX_"))
    running.process.kill()
    running.process.wait()
    deadline = time.monotonic() + 40
    while still := [s for s, port in running.ports.items() if port_open("127.0.0.1", port)]:
        assert time.monotonic() < deadline, f"still running 40 s after the launcher died: {still}"
        time.sleep(0.5)


def test_the_launcher_prints_a_curl_that_works(system: dict[str, Any]) -> None:
    text = system["log"].read_text()
    line = next(line for line in text.splitlines() if "curl" in line and "/v1/availability" in line)
    url = line.split('"')[-2]
    answer = httpx.get(url, headers={"Authorization": f"Bearer {ADMIN}"})
    assert answer.status_code == 200
    assert isinstance(answer.json(), list) and answer.json(), (
        "the demo clinic has free times next week"
    )


def test_the_launcher_prints_a_clients_page_that_opens(system: dict[str, Any]) -> None:
    """The demo books James a visit and prints his page: it opens without a key."""
    deadline = time.monotonic() + 30
    while not (
        lines := [
            line.strip()
            for line in system["log"].read_text().splitlines()
            if line.strip().startswith("http") and "/m/" in line
        ]
    ):
        assert time.monotonic() < deadline, "make run printed no client's page"
        time.sleep(0.2)
    url = lines[-1]
    page = httpx.get(url, timeout=10)
    assert page.status_code == 200
    assert "James" in page.text and "Riverside Clinic" in page.text
    auth = {"Authorization": f"Bearer {ADMIN}"}
    clients = httpx.get(f"{system['booking']}/v1/clients", headers=auth).json()
    james = next(c for c in clients if c["first_name"] == "James")
    sessions = httpx.get(
        f"{system['booking']}/v1/sessions", params={"client_id": james["id"]}, headers=auth
    ).json()
    assert url in [s["manage_url"] for s in sessions]


@pytest.mark.asyncio(loop_scope="session")
async def test_book_over_http_and_hear_it_on_nats_and_see_it_in_the_calendar(
    system: dict[str, Any],
) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=system["booking"], headers=auth, timeout=30) as client:
        locations = (await client.get("/v1/locations")).json()
        assert {loc["timezone"] for loc in locations} == {"America/New_York", "America/Chicago"}
        therapists = (await client.get("/v1/therapists")).json()
        assert len(therapists) == 4
        both = [t for t in therapists if len({h["location_id"] for h in t["working_hours"]}) == 2]
        assert len(both) == 2
        services = {s["name"]: s for s in (await client.get("/v1/services")).json()}
        assert services["Medical massage 90"]["duration_minutes"] == 90
        person = (await client.get("/v1/clients")).json()[0]
        location = locations[0]
        start = datetime.now(UTC) + timedelta(days=2)
        slots = (
            await client.get(
                "/v1/availability",
                params={
                    "service_id": services["Medical massage 60"]["id"],
                    "location_id": location["id"],
                    "start": start.isoformat(),
                    "end": (start + timedelta(days=7)).isoformat(),
                },
            )
        ).json()
        slot = slots[0]

        async with EventTap(system["nats"], "booking.session.booked") as tap:
            booked = await client.post(
                "/v1/sessions",
                json={
                    "client_id": person["id"],
                    "service_id": services["Medical massage 60"]["id"],
                    "location_id": location["id"],
                    "start": slot["start"],
                },
            )
            assert booked.status_code == 201, booked.text
            event = await tap.wait_for(lambda e: e["data"]["session_id"] == booked.json()["id"])
        assert event["specversion"] == "1.0"
        assert event["data"]["location"]["name"] == location["name"]

        therapist = next(t for t in therapists if t["id"] == booked.json()["therapist_id"])
        feed = httpx.get(therapist["ics_url"])
        assert feed.headers["content-type"].startswith("text/calendar")
        calendar = icalendar.Calendar.from_ical(feed.content)
        uids = [str(e["UID"]) for e in calendar.walk("VEVENT")]
        assert any(uid.startswith(booked.json()["id"]) for uid in uids)


@pytest.mark.asyncio(loop_scope="session")
async def test_streams_are_stored_on_disk(system: dict[str, Any]) -> None:
    nc = await nats.connect(system["nats"])
    info = await nc.jetstream().stream_info("BOOKING")
    await nc.close()
    assert str(getattr(info.config.storage, "value", info.config.storage)) == "file"
    assert json.dumps(info.config.subjects) == '["booking.>"]'
