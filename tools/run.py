"""`make run`: the whole system on one machine, on embedded defaults.

Starts the embedded NATS server (JetStream, data under ``var/nats``), every service in
``tools.commands.SERVICE_COMMANDS``, seeds the demo clinic once, prints the URLs and a
working ``curl``. Ctrl-C stops everything, children first, NATS last.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from shared.natsd import EmbeddedNats, port_open
from shared.settings import DEV_ADMIN_API_KEY, PROJECT_ROOT
from tools.commands import SANDBOX_COMMAND, SERVICE_COMMANDS
from tools.seed import seed_demo, seed_referrals

PORTS = {"booking": "BOOKING_PORT", "reminders": "REMINDERS_PORT", "referrals": "REFERRALS_PORT"}
DEFAULT_PORTS = {"booking": 8001, "reminders": 8002, "referrals": 8003}


def service_url(name: str) -> str:
    return f"http://127.0.0.1:{os.environ.get(PORTS[name], DEFAULT_PORTS[name])}"


def _argv(command: list[str]) -> list[str]:
    return [sys.executable if part == "python" else part for part in command]


def wait_ready(
    url: str, process: subprocess.Popen[bytes], timeout: float = 60.0, path: str = "/readyz"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with code {process.returncode}; see the log above")
        try:
            if httpx.get(f"{url}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} was not ready within {timeout:.0f}s")


def main() -> int:
    var = Path(os.environ.get("VAR_DIR", PROJECT_ROOT / "var"))
    var.mkdir(parents=True, exist_ok=True)
    nats_url = os.environ.setdefault("NATS_URL", "nats://127.0.0.1:4222")
    admin_key = os.environ.setdefault("ADMIN_API_KEY", DEV_ADMIN_API_KEY)
    parsed = urlparse(nats_url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 4222

    nats: EmbeddedNats | None = None
    if port_open(host, port):
        print(f"Using the NATS server already listening at {nats_url}")
    else:
        nats = EmbeddedNats(var / "nats", port=port, host=host).start()

    # The Twilio sandbox stands in for Twilio: reminders sends to it, it posts the phones'
    # replies back to reminders. Quiet hours are off so a demo booking texts at once.
    sandbox_port = os.environ.setdefault("SANDBOX_PORT", "8025")
    os.environ.setdefault("SANDBOX_INBOUND_URL", f"{service_url('reminders')}/twilio/inbound")
    os.environ.setdefault("TWILIO_API_BASE_URL", f"http://127.0.0.1:{sandbox_port}")
    os.environ.setdefault("QUIET_HOURS_START", "00:00")
    os.environ.setdefault("QUIET_HOURS_END", "24:00")

    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        sandbox = subprocess.Popen(_argv(SANDBOX_COMMAND), cwd=PROJECT_ROOT)
        children["twilio-sandbox"] = sandbox
        wait_ready(f"http://127.0.0.1:{sandbox_port}", sandbox, path="/_sandbox/health")
        for name, command in SERVICE_COMMANDS.items():
            children[name] = subprocess.Popen(_argv(command), cwd=PROJECT_ROOT)
        for name in SERVICE_COMMANDS:
            wait_ready(service_url(name), children[name])

        demo = seed_demo(service_url("booking"), admin_key)
        partners: dict[str, Any] = {}
        if "referrals" in children:
            clients = httpx.get(
                f"{service_url('booking')}/v1/clients",
                headers={"Authorization": f"Bearer {admin_key}"},
                timeout=10,
            ).json()
            partners = seed_referrals(
                service_url("referrals"), admin_key, clients[0] if clients else None
            )
        print_welcome(demo, admin_key, partners)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while all(p.poll() is None for p in children.values()):
            time.sleep(0.5)
        failed = [n for n, p in children.items() if p.poll() is not None]
        print(f"stopped because {', '.join(failed)} exited", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping…")
        return 0
    finally:
        for process in children.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in children.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        if nats is not None:
            nats.stop()


def print_welcome(demo: dict[str, object], admin_key: str, partners: dict[str, Any]) -> None:
    booking = service_url("booking")
    auth = {"Authorization": f"Bearer {admin_key}"}
    location = httpx.get(f"{booking}/v1/locations", headers=auth).json()[0]
    services = httpx.get(f"{booking}/v1/services", headers=auth).json()
    service = next((s for s in services if s["name"] == "Medical massage 60"), services[0])
    service_id, location_id = service["id"], location["id"]
    start = datetime.now(UTC).date() + timedelta(days=1)
    end = start + timedelta(days=7)
    print("\nThe clinic is running.\n")
    for name in SERVICE_COMMANDS:
        print(f"  {name:<10} {service_url(name)}   docs: {service_url(name)}/docs")
    print(f"  NATS       {os.environ['NATS_URL']}")
    print(
        f"  phones     {os.environ['TWILIO_API_BASE_URL']}/   (the Twilio sandbox: texts and replies)"
    )
    print(f"\nAdmin API key (development only): {admin_key}")
    print(f"\nFree times for {service['name']} at {location['name']} next week:")
    print(
        f'  curl -s -H "Authorization: Bearer {admin_key}" '
        f'"{booking}/v1/availability?service_id={service_id}&location_id={location_id}'
        f'&start={start}T00:00:00Z&end={end}T00:00:00Z"'
    )
    if demo.get("seeded"):
        print(
            "\nSeeded the demo clinic: two locations, four therapists, four treatments, three clients."
        )
    if partners.get("seeded"):
        print("\nSeeded two partner providers and a care plan. Their keys are shown only now:")
        for partner in partners.get("partners", []):
            print(f"  {partner['name']}: {partner['api_key']}")
        first = partners.get("partners", [{}])[0].get("api_key")
        if first:
            print(
                f'  curl -s -H "Authorization: Bearer {first}" {service_url("referrals")}/v1/partner/referrals'
            )
    print("\nCtrl-C stops everything.")


if __name__ == "__main__":
    raise SystemExit(main())
