"""`python -m tools.cluster`: the system beyond one machine, on one machine.

Three JetStream ``nats-server`` nodes routed into one cluster (clients on 4222, 4223 and
4224), the users of :mod:`shared.natsauth` with passwords kept under
``var/cluster/nats/``, every stream and the lease bucket with three replicas, two replicas
each of booking (8001, 8011), reminders (8002, 8012) and referrals (8003, 8013), and the
Twilio sandbox (8025). Every service is given all three servers, so losing a node costs a
reconnect, not an outage. The settings of ``make run`` hold (``ADMIN_API_KEY``,
``TWILIO_*``, ``*_DATABASE_URL``…); without ``*_DATABASE_URL`` the replicas of a service
share one SQLite file under ``var/cluster/``. Ctrl-C or SIGTERM stops everything.

:class:`Cluster` is also what the fault test (tests/fault/) starts, on other ports.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.natsauth import ADMIN, OBSERVER, Credentials
from shared.natsd import EmbeddedNats, Routes
from shared.settings import DEV_ADMIN_API_KEY, PROJECT_ROOT
from tools.commands import SANDBOX_COMMAND, SERVICE_COMMANDS
from tools.run import spawn, stop_children, supervise, use_sandbox, wait_ready
from tools.seed import seed_demo, seed_referrals

NATS_PORTS = (4222, 4223, 4224)
ROUTE_PORTS = (6222, 6223, 6224)
SERVICE_PORTS: dict[str, tuple[int, ...]] = {
    "booking": (8001, 8011),
    "reminders": (8002, 8012),
    "referrals": (8003, 8013),
}
SANDBOX_PORT = 8025
REPLICAS = 3


@dataclass
class Cluster:
    """Three NATS nodes and replicas of every service, each a child process."""

    var: Path
    nats_ports: Sequence[int] = NATS_PORTS
    route_ports: Sequence[int] = ROUTE_PORTS
    service_ports: Mapping[str, Sequence[int]] = field(default_factory=lambda: SERVICE_PORTS)
    sandbox_port: int = SANDBOX_PORT
    #: Added to every service's environment (database URLs, tuning).
    env: dict[str, str] = field(default_factory=dict)
    #: Child output goes to ``var/logs/<name>.log`` when true, else to this terminal.
    quiet: bool = False
    nodes: list[EmbeddedNats] = field(default_factory=list)
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.nats_dir = self.var / "nats"
        self.credentials = Credentials.load_or_create(self.nats_dir)
        routes = [f"nats://127.0.0.1:{port}" for port in self.route_ports]
        self.nodes = [
            EmbeddedNats(
                self.nats_dir / f"n{i + 1}",
                port=port,
                credentials=self.credentials,
                cluster=Routes(port=route, routes=routes),
                server_name=f"n{i + 1}",
            )
            for i, (port, route) in enumerate(zip(self.nats_ports, self.route_ports, strict=True))
        ]

    @property
    def servers(self) -> list[str]:
        return [node.url for node in self.nodes]

    def nats_url(self, user: str) -> str:
        """``NATS_URL`` of ``user``: all three servers."""
        return self.credentials.url(user, self.servers)

    def url(self, service: str, replica: int = 0) -> str:
        return f"http://127.0.0.1:{self.service_ports[service][replica]}"

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}"

    def start_nats(self) -> None:
        for node in self.nodes:
            node.start()
        self.credentials.write_urls(self.nats_dir, self.servers)

    def service_env(self, service: str, port: int) -> dict[str, str]:
        return {
            "VAR_DIR": str(self.var),
            "NATS_URL": self.nats_url(service),
            "NATS_REPLICAS": str(REPLICAS),
            f"{service.upper()}_PORT": str(port),
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            **self.env,
        }

    def start_replica(self, service: str, replica: int) -> subprocess.Popen[bytes]:
        name = f"{service}-{replica + 1}"
        port = self.service_ports[service][replica]
        process = spawn(SERVICE_COMMANDS[service], self.service_env(service, port), self._log(name))
        self.children[name] = process
        return process

    def start_services(self, timeout: float = 90.0) -> None:
        """The sandbox, then each service's first replica (it migrates the database, so
        the others wait for it), then the others."""
        os.environ["SANDBOX_PORT"] = str(self.sandbox_port)
        use_sandbox(self.url("reminders"))
        sandbox = spawn(SANDBOX_COMMAND, {}, self._log("twilio-sandbox"))
        self.children["twilio-sandbox"] = sandbox
        wait_ready(self.sandbox_url, sandbox, path="/_sandbox/health")
        for wave in (range(1), range(1, max(map(len, self.service_ports.values())))):
            started = [
                (service, replica, self.start_replica(service, replica))
                for service, ports in self.service_ports.items()
                for replica in wave
                if replica < len(ports)
            ]
            for service, replica, process in started:
                wait_ready(self.url(service, replica), process, timeout=timeout)

    def stop(self) -> None:
        stop_children(self.children)
        self.children.clear()
        for node in self.nodes:
            node.stop()

    def _log(self, name: str) -> Path | None:
        if not self.quiet:
            return None
        (self.var / "logs").mkdir(parents=True, exist_ok=True)
        return self.var / "logs" / f"{name}.log"


def main() -> int:
    var = Path(os.environ.get("VAR_DIR", PROJECT_ROOT / "var")) / "cluster"
    admin_key = os.environ.setdefault("ADMIN_API_KEY", DEV_ADMIN_API_KEY)
    cluster = Cluster(var)
    try:
        cluster.start_nats()
        cluster.start_services()
        demo = seed_demo(cluster.url("booking"), admin_key)
        auth = {"Authorization": f"Bearer {admin_key}"}
        clients = httpx.get(f"{cluster.url('booking')}/v1/clients", headers=auth).json()
        seed_referrals(cluster.url("referrals"), admin_key, clients[0] if clients else None)
        print_where(cluster, bool(demo.get("seeded")))
        return supervise(cluster.children)
    except KeyboardInterrupt:
        print("\nStopping…")
        return 0
    finally:
        cluster.stop()


def print_where(cluster: Cluster, seeded: bool) -> None:
    print("\nThe clinic runs as a cluster.\n")
    for node in cluster.nodes:
        print(f"  NATS {node.server_name}    {node.url}   (JetStream, {REPLICAS} replicas)")
    for service, ports in cluster.service_ports.items():
        urls = "  ".join(f"http://127.0.0.1:{port}" for port in ports)
        print(f"  {service:<10} {urls}")
    print(f"  phones     {cluster.sandbox_url}/   (the Twilio sandbox)")
    print(f"\nNATS users: {cluster.nats_dir}/<user>.url")
    print(f"  observer (subscribe only): {cluster.nats_dir / f'{OBSERVER}.url'}")
    print(f"  admin (streams, consumers): {cluster.nats_dir / f'{ADMIN}.url'}")
    if seeded:
        print("\nSeeded the demo clinic.")
    print("\nCtrl-C stops everything.")


if __name__ == "__main__":
    raise SystemExit(main())
