"""The system as `make run` starts it: a separate launcher process, NATS, the services, the seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import icalendar
import nats
import pytest

from shared.natsd import free_port, port_open
from shared.settings import PROJECT_ROOT
from tests.support import EventTap

ADMIN = "e2e-admin-key"


def _launch(var: Path) -> tuple[subprocess.Popen[bytes], dict[str, int], Path]:
    """``make run``'s launcher on free ports under ``var``, once it says the clinic runs."""
    ports = {name: free_port() for name in ("booking", "reminders", "referrals", "sandbox", "nats")}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "SANDBOX_"))},
        "REMINDERS_PORT": str(ports["reminders"]),
        "REFERRALS_PORT": str(ports["referrals"]),
        "SANDBOX_PORT": str(ports["sandbox"]),
        "VAR_DIR": str(var),
        "NATS_URL": f"nats://127.0.0.1:{ports['nats']}",
        "BOOKING_PORT": str(ports["booking"]),
        "ADMIN_API_KEY": ADMIN,
    }
    log = var / "run.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tools.run"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = datetime.now() + timedelta(seconds=90)
    while "The clinic is running" not in log.read_text():
        if process.poll() is not None or datetime.now() > deadline:
            process.kill()
            pytest.fail(f"make run did not come up in 90 s: {log.read_text()[-3000:]}")
        time.sleep(0.2)
    return process, ports, log


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    var = tmp_path_factory.mktemp("var")
    process, ports, log = _launch(var)
    try:
        yield {
            "booking": f"http://127.0.0.1:{ports['booking']}",
            # make run's NATS refuses anonymous connections: the tests connect as admin.
            "nats": (var / "nats" / "admin.url").read_text().strip(),
            "log": log,
        }
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def test_a_killed_launcher_leaves_no_server_running(tmp_path: Path) -> None:
    """kill -9 of ``make run`` (the OOM killer, a closed terminal's hard kill) stops NATS,
    the sandbox and the three services too: none is left holding its port and database."""
    process, ports, _log = _launch(tmp_path)
    process.kill()
    process.wait()
    deadline = time.monotonic() + 40
    while still := [name for name, port in ports.items() if port_open("127.0.0.1", port)]:
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
