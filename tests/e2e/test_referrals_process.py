"""The referrals service as `make run` and compose start it: its own process
(``python -m services.referrals``), configured by the environment, over real HTTP and NATS."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from fhir.resources.R4B.task import Task

from shared.natsauth import with_credentials
from shared.natsd import EmbeddedNats, free_port
from shared.settings import PROJECT_ROOT
from tests.referrals_support import client_event, publish
from tests.support import EventTap, eventually, interrupt
from tools.seed import seed_referrals as seed_demo

ADMIN = "e2e-referrals-admin-key"


def _env(var: Path, nats_url: str, port: int, **extra: str) -> dict[str, str]:
    scrubbed = {k: v for k, v in os.environ.items() if not k.startswith(("REFERRALS_", "APP_"))}
    return {
        **scrubbed,
        "VAR_DIR": str(var),
        # Production connects as a NATS user (the test server takes any).
        "NATS_URL": with_credentials(nats_url, "referrals", "test"),
        "REFERRALS_PORT": str(port),
        "ADMIN_API_KEY": ADMIN,
        "APP_ENV": "production",
        "REFERRALS_SECRET_KEY": Fernet.generate_key().decode(),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


@pytest.fixture(scope="module")
def nats_for_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), port=free_port()).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, nats_for_process: str
) -> Iterator[dict[str, Any]]:
    var = tmp_path_factory.mktemp("var")
    port = free_port()
    log = (var / "referrals.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.referrals"],
        cwd=PROJECT_ROOT,
        env=_env(var, nats_for_process, port),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, Path(log.name).read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "referrals did not become ready in 60 s"
            time.sleep(0.1)
        yield {"url": url, "process": process, "var": var, "log": Path(log.name)}
    finally:
        interrupt(process, timeout=20)
        log.close()


def test_production_refuses_the_documented_dev_keys(tmp_path: Path) -> None:
    env = _env(tmp_path, "nats://127.0.0.1:1", free_port())
    del env["REFERRALS_SECRET_KEY"]
    result = subprocess.run(
        [sys.executable, "-m", "services.referrals", "migrate"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "REFERRALS_SECRET_KEY is the documented development value" in result.stderr


def test_migrate_alone_builds_the_schema(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.referrals", "migrate"],
        cwd=PROJECT_ROOT,
        env=_env(tmp_path, "nats://127.0.0.1:1", free_port()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "referrals.db") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"partners", "plans", "referrals", "deliveries", "outbox", "inbox"} <= tables


def test_health_and_the_openapi_document(service: dict[str, Any]) -> None:
    assert httpx.get(f"{service['url']}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{service['url']}/readyz").json()
    assert ready["database"] == "ok" and ready["nats"] == "ok"
    paths = httpx.get(f"{service['url']}/openapi.json").json()["paths"]
    for path in (
        "/v1/partners",
        "/v1/plans",
        "/v1/referrals",
        "/v1/partner/referrals/{referral_id}/accept",
        "/fhir/R4/Task/{referral_id}",
        "/fhir/R4/Observation",
    ):
        assert path in paths


@pytest.mark.asyncio(loop_scope="session")
async def test_seeded_partner_accepts_and_schedules_over_http_and_nats_hears_it(
    service: dict[str, Any], nats_for_process: str
) -> None:
    client_id = str(uuid.uuid4())
    seeded = seed_demo(service["url"], ADMIN, {"id": client_id, "first_name": "Maria"})
    assert seeded["seeded"] is True
    pt, acu = seeded["partners"]
    assert (pt["discipline"], acu["discipline"]) == ("physical_therapy", "acupuncture")
    assert pt["api_key"] and pt["webhook_secret"]
    assert seed_demo(service["url"], ADMIN, None) == {"seeded": False}
    # The demo plan has a baseline: check-in scores show their trend against it.
    assert seeded["plan"]["outcome_summary"] == {
        "baseline_pain_score": 7,
        "latest": None,
        "change_from_baseline": None,
        "count": 0,
    }

    await publish(nats_for_process, client_event(client_id))
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=service["url"], headers=admin, timeout=30) as clinic:

        async def known() -> bool:
            return (await clinic.get(f"/v1/clients/{client_id}")).status_code == 200

        await eventually(known, what="booking's client event applied by the process")
        created = await clinic.post(
            "/v1/referrals",
            json={
                "plan_id": seeded["plan"]["id"],
                "partner_id": pt["id"],
                "reason": "Low back pain with guarded gait",
                "diagnosis_codes": ["M54.59", "R26.89"],
                "urgency": "urgent",
                "consent_to_share": True,
            },
        )
        assert created.status_code == 201, created.text
        referral_id = created.json()["id"]

    partner = {"Authorization": f"Bearer {pt['api_key']}"}
    async with (
        httpx.AsyncClient(base_url=service["url"], headers=partner, timeout=30) as api,
        EventTap(nats_for_process, "referrals.referral.>") as tap,
    ):
        listed = (await api.get("/v1/partner/referrals")).json()
        assert [r["id"] for r in listed] == [referral_id]
        assert listed[0]["sessions"] == 6 and listed[0]["per_week"] == 2
        assert (await api.post(f"/v1/partner/referrals/{referral_id}/accept")).status_code == 200
        start = (datetime.now(UTC) + timedelta(days=4)).isoformat()
        scheduled = await api.post(
            f"/v1/partner/referrals/{referral_id}/schedule", json={"start": start}
        )
        assert scheduled.status_code == 200, scheduled.text
        event = await tap.wait_for(lambda e: e["type"] == "referrals.referral.scheduled")
        task = Task.model_validate_json((await api.get(f"/fhir/R4/Task/{referral_id}")).content)
    assert [e["data"]["status"] for e in tap.events()] == ["received", "accepted", "scheduled"]
    assert event["source"] == "referrals" and event["data"]["client_id"] == client_id
    assert task.status == "in-progress"


def test_sigint_stops_the_process_cleanly(service: dict[str, Any]) -> None:
    process: subprocess.Popen[bytes] = service["process"]
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=20) == 0
    log = service["log"].read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "lease.released" in log
