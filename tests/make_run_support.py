"""`make run` as the end-to-end tests start it: the launcher (``python -m tools.run``) on
free ports under a directory of its own, once it says the clinic runs, and its stop."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.natsd import free_port
from shared.settings import PROJECT_ROOT
from tests.support import interrupt

#: What the launcher starts, each on a port of its own.
SERVERS = ("booking", "reminders", "referrals", "sandbox", "nats")


@dataclass(frozen=True)
class Launched:
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    var: Path
    log: Path

    def url(self, server: str) -> str:
        return f"http://127.0.0.1:{self.ports[server]}"

    @property
    def admin_nats_url(self) -> str:
        """make run's NATS refuses anonymous connections: the tests connect as admin."""
        return (self.var / "nats" / "admin.url").read_text().strip()


def launch(
    var: Path, admin_key: str, *, scrub: tuple[str, ...], timeout: float = 90, **extra: str
) -> Launched:
    """The launcher with this environment less the variables starting with ``scrub``, plus
    ``extra``; fails the test with the log's tail if the clinic is not running in
    ``timeout`` seconds."""
    ports = {server: free_port() for server in SERVERS}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(scrub)},
        "VAR_DIR": str(var),
        "NATS_URL": f"nats://127.0.0.1:{ports['nats']}",
        "BOOKING_PORT": str(ports["booking"]),
        "REMINDERS_PORT": str(ports["reminders"]),
        "REFERRALS_PORT": str(ports["referrals"]),
        "SANDBOX_PORT": str(ports["sandbox"]),
        "ADMIN_API_KEY": admin_key,
        **extra,
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
    deadline = time.monotonic() + timeout
    while "The clinic is running" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            pytest.fail(f"make run did not come up in {timeout:.0f} s: {log.read_text()[-3000:]}")
        time.sleep(0.2)
    return Launched(process, ports, var, log)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as a person stops it; killed if it has not stopped in 30 s."""
    interrupt(process, timeout=30)
