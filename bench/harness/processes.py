"""Child processes of a benchmark run and their teardown.

The benchmarks start every server the way production does, as its own process, on
127.0.0.1 with free ports and a temporary directory. :class:`Stack` owns those processes
and the directory and tears them down on every exit path: normal return, exception,
Ctrl-C, SIGTERM/SIGHUP, and (for the children it starts itself) the death of the benchmark
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.lifeline import DIES_WITH_PARENT
from shared.natsauth import with_credentials
from shared.natsd import EmbeddedNats, free_port, port_open

PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Variables of the parent that would change what a service under test does: every
#: service's own settings and the ones they share.
_SCRUBBED_PREFIXES = (
    "BOOKING_",
    "REMINDERS_",
    "REFERRALS_",
    "TWILIO_",
    "SANDBOX_",
    "QUIET_",
    "SMS_",
)
_SCRUBBED_NAMES = {
    "PUBLIC_BASE_URL",
    "NATS_URL",
    "VAR_DIR",
    "ADMIN_API_KEY",
    "APP_ENV",
    "MIGRATE_ON_START",
    "OUTBOX_POLL_SECONDS",
}


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the result table and the JSON line."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class ChildFailed(RuntimeError):
    """A server process exited or did not become ready."""


@dataclass
class Child:
    """One server process; its stdout and stderr go to ``log_path``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log_file: Any = None

    def start(self) -> Child:
        self._log_file = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv,
            cwd=PROJECT_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=DIES_WITH_PARENT,
        )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float | None:
        """User + system CPU of the process and its threads so far (Linux ``/proc``)."""
        if self.process is None:
            return None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    async def wait_ready(self, url: str, timeout: float = 60.0) -> None:
        """Poll ``url`` until it answers 200; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if not self.running:
                    raise ChildFailed(
                        f"{self.name} exited with {self.process.returncode if self.process else '?'}"
                        f" before it was ready; log tail:\n{self.log_tail()}"
                    )
                try:
                    response = await client.get(url)
                    if response.status_code == 200:
                        return
                    last = f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}"
                if time.monotonic() > deadline:
                    raise ChildFailed(
                        f"{self.name} not ready after {timeout:.0f}s ({url}: {last}); "
                        f"log tail:\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.1)

    async def wait_port(self, port: int, timeout: float = 30.0) -> None:
        """Wait until the process accepts connections on ``port`` (no HTTP health route)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if not self.running or time.monotonic() > deadline:
                    raise ChildFailed(f"{self.name} did not start: {self.log_tail()}") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


@dataclass
class Stack:
    """The temporary directory, NATS, and the server processes of one benchmark run."""

    keep: bool = False
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="clinic-bench-")))
    admin_key: str = field(default_factory=lambda: "bench-" + secrets.token_urlsafe(24))
    nats_url: str | None = None
    children: list[Child] = field(default_factory=list)
    _closed: bool = False

    def start_nats(self, timeout: float = 10.0) -> str:
        """``nats-server --jetstream`` exactly as :class:`EmbeddedNats` runs it, as a :class:`Child`
        (so it is logged, and dies with the benchmark even if that is killed)."""
        server = EmbeddedNats(self.tmp / "nats", port=free_port())
        server.store_dir.mkdir(parents=True, exist_ok=True)
        child = self.start_child("nats", server.command(), dict(os.environ))
        deadline = time.monotonic() + timeout
        while not port_open(server.host, server.port):
            if not child.running:
                raise ChildFailed(f"nats-server exited at start:\n{child.log_tail()}")
            if time.monotonic() > deadline:
                raise ChildFailed(f"nats-server did not open port {server.port} in {timeout}s")
            time.sleep(0.05)
        self.nats_url = server.url
        log(f"nats-server on {server.url} (store {server.store_dir})")
        return server.url

    def start_child(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        child = Child(name, argv, env, self.tmp / f"{name}.log")
        self.children.append(child)
        return child.start()

    def env(self, **values: str) -> dict[str, str]:
        """The parent's environment without any service setting, plus ``values``."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_SCRUBBED_PREFIXES) and k not in _SCRUBBED_NAMES
        }
        env.update(values)
        return env

    def service_env(self, port_variable: str, port: int, **values: str) -> dict[str, str]:
        """What every service process gets, as compose sets it: NATS, its port, ``var/``,
        the admin key; then ``values``."""
        if self.nats_url is None:
            raise RuntimeError("start NATS first")
        service = port_variable.split("_")[0].lower()
        return self.env(
            # Production connects as a NATS user; the bench's server takes any.
            NATS_URL=with_credentials(self.nats_url, service, "bench"),
            VAR_DIR=str(self.tmp / "var"),
            ADMIN_API_KEY=self.admin_key,
            PYTHONUNBUFFERED="1",
            **{port_variable: str(port)},
            **values,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop()
        if self.keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _raise_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def run(
    main: Callable[[Stack], Awaitable[dict[str, Any]]],
    *,
    budget: float,
    keep: bool = False,
) -> dict[str, Any]:
    """Run ``main(stack)`` within ``budget`` seconds; the stack is torn down on every path."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_exit)
    stack = Stack(keep=keep)

    async def bounded() -> dict[str, Any]:
        try:
            return await asyncio.wait_for(main(stack), timeout=budget)
        except TimeoutError:
            raise SystemExit(f"benchmark exceeded its time budget of {budget:.0f}s") from None

    try:
        return asyncio.run(bounded())
    except ChildFailed as exc:
        raise SystemExit(f"error: {exc}") from None
    except KeyboardInterrupt:
        log("interrupted; stopping the servers")
        raise SystemExit(130) from None
    finally:
        stack.close()
