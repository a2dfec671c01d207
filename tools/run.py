"""`make run`: the whole system on one machine, on embedded defaults.

Starts the embedded NATS server (JetStream, data under ``var/nats``, a user per service with
fresh passwords kept in ``var/nats/users.json``; anonymous refused), every service in
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

from shared.lifeline import DIES_WITH_PARENT
from shared.natsauth import Credentials, parse_servers, redact
from shared.natsd import EmbeddedNats, port_open
from shared.settings import DEV_ADMIN_API_KEY, PROJECT_ROOT
from tools.commands import SANDBOX_COMMAND, SERVICE_COMMANDS
from tools.seed import demo_visit, seed_demo, seed_referrals

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


def start_nats(var: Path) -> tuple[EmbeddedNats | None, dict[str, str]]:
    """The embedded NATS with the users of ``var/nats/`` (anonymous refused), unless one
    already listens at ``NATS_URL``. Returns it and each service's ``NATS_URL``.

    Passwords are made on the first run and reused, so a service started by hand later
    connects with ``NATS_URL=$(cat var/nats/booking.url)``. A ``NATS_URL`` that carries
    a user is the operator's own NATS: every service uses it as given."""
    given = os.environ.setdefault("NATS_URL", "nats://127.0.0.1:4222")
    servers = parse_servers(given)
    if servers.user is not None:
        return None, {name: given for name in SERVICE_COMMANDS}
    nats_dir = var / "nats"
    credentials = Credentials.load_or_create(nats_dir)
    parsed = urlparse(servers.urls[0])
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 4222
    nats: EmbeddedNats | None = None
    if port_open(host, port):
        print(f"Using the NATS server already listening at {servers.urls[0]}")
    else:
        nats = EmbeddedNats(nats_dir, port=port, host=host, credentials=credentials).start()
    credentials.write_urls(nats_dir, servers.urls)
    return nats, {name: credentials.url(name, servers.urls) for name in SERVICE_COMMANDS}


def use_sandbox(reminders_url: str) -> str:
    """Point reminders at the Twilio sandbox and the sandbox's replies at reminders.
    Quiet hours are off so a demo booking texts at once. Returns the sandbox's URL."""
    sandbox_port = os.environ.setdefault("SANDBOX_PORT", "8025")
    os.environ.setdefault("SANDBOX_INBOUND_URL", f"{reminders_url}/twilio/inbound")
    os.environ.setdefault("TWILIO_API_BASE_URL", f"http://127.0.0.1:{sandbox_port}")
    os.environ.setdefault("QUIET_HOURS_START", "00:00")
    os.environ.setdefault("QUIET_HOURS_END", "24:00")
    return f"http://127.0.0.1:{sandbox_port}"


def spawn(
    command: list[str], env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """A child from the project's root, with this environment plus ``env``; its output
    goes to ``log`` when given, else to ours."""
    out = log.open("ab") if log is not None else None
    try:
        return subprocess.Popen(
            _argv(command),
            cwd=PROJECT_ROOT,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            preexec_fn=DIES_WITH_PARENT,  # no orphans if this launcher is killed
        )
    finally:
        if out is not None:
            out.close()


def supervise(children: dict[str, subprocess.Popen[bytes]]) -> int:
    """Wait until Ctrl-C or SIGTERM (0) or until a child exits (1)."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while all(p.poll() is None for p in children.values()):
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nStopping…")
        return 0
    failed = [n for n, p in children.items() if p.poll() is not None]
    print(f"stopped because {', '.join(failed)} exited", file=sys.stderr)
    return 1


def stop_children(children: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGINT to all at once, then wait; whoever does not stop in 15 s is killed."""
    for process in children.values():
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in children.values():
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> int:
    var = Path(os.environ.get("VAR_DIR", PROJECT_ROOT / "var"))
    var.mkdir(parents=True, exist_ok=True)
    admin_key = os.environ.setdefault("ADMIN_API_KEY", DEV_ADMIN_API_KEY)
    nats, nats_urls = start_nats(var)
    sandbox_url = use_sandbox(service_url("reminders"))

    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        children["twilio-sandbox"] = spawn(SANDBOX_COMMAND)
        wait_ready(sandbox_url, children["twilio-sandbox"], path="/_sandbox/health")
        for name, command in SERVICE_COMMANDS.items():
            children[name] = spawn(command, {"NATS_URL": nats_urls[name]})
        for name in SERVICE_COMMANDS:
            wait_ready(service_url(name), children[name])

        demo = seed_demo(service_url("booking"), admin_key)
        demo["visit"] = demo_visit(service_url("booking"), admin_key)
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
        print_welcome(demo, admin_key, partners, var)
        return supervise(children)
    except KeyboardInterrupt:
        print("\nStopping…")
        return 0
    finally:
        stop_children(children)
        if nats is not None:
            nats.stop()


def print_welcome(
    demo: dict[str, object], admin_key: str, partners: dict[str, Any], var: Path
) -> None:
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
    print(
        f"  NATS       {redact(os.environ['NATS_URL'])}   users: {var / 'nats'}/<user>.url,"
        " the observer (subscribe only) in observer.url"
    )
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
    visit = demo.get("visit")
    if isinstance(visit, dict) and visit.get("manage_url"):
        print(
            "\nJames's next visit: his own page (confirm, cancel, reschedule; no key needed),"
            " the link his confirmation text carries on the sandbox:"
        )
        print(f"  {visit['manage_url']}")
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
