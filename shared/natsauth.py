"""NATS users: who may publish and subscribe to what, their passwords, and URLs carrying them.

Anonymous connections are refused (there are users and no ``no_auth_user``). Each service
connects as its own user and may publish only its own event subjects, dead letters, and
what JetStream needs for its own streams, consumers and lease key; it may subscribe only to
its inboxes and to JetStream advisories. The ``observer`` may subscribe to every event
subject and publish nothing. ``admin`` may do anything (operators, tests, the cluster check).

A service's credentials travel in its ``NATS_URL`` (``nats://booking:secret@host:4222``,
several comma-separated for a cluster); :func:`parse_servers` takes them out again so they
never appear in logs, in ``/asyncapi.json`` or in the server list nats-py gossips about.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

#: Services with a NATS user; each owns the subjects ``<service>.>``.
SERVICES = ("booking", "reminders", "referrals")
OBSERVER = "observer"
ADMIN = "admin"
USERS = (*SERVICES, OBSERVER, ADMIN)

#: The KV bucket of the leases (shared/lease.py): each service writes only its own keys.
LEASE_BUCKET = "leases"
#: The lease keys each service holds (a NATS wildcard matches whole tokens only, so
#: ``booking-*`` cannot be said): booking's waitlist lapses and its calendar jobs.
LEASE_KEYS: dict[str, tuple[str, ...]] = {
    "booking": ("booking-scheduler", "booking-calendar"),
    "reminders": ("reminders-scheduler",),
    "referrals": ("referrals-scheduler",),
}

#: JetStream API calls no service needs and none may make: they destroy others' data.
_DENIED_API = (
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
)


def permissions(user: str) -> dict[str, object] | None:
    """The nats-server ``permissions`` block of ``user``; ``None`` means everything."""
    if user == ADMIN:
        return None
    if user == OBSERVER:
        return {
            "publish": {"deny": [">"]},
            "subscribe": {"allow": ["booking.>", "reminders.>", "referrals.>", "dlq.>"]},
        }
    if user not in SERVICES:
        raise ValueError(f"unknown NATS user {user!r}")
    return {
        "publish": {
            "allow": [
                f"{user}.>",
                "dlq.>",
                # Stream and consumer management, pull requests, stream info and
                # message reads (every service makes sure every stream exists).
                "$JS.API.>",
                "$JS.ACK.>",  # acknowledging what its consumers received
                "$JS.FC.>",  # flow control of ordered consumers (KV reads)
                *(f"$KV.{LEASE_BUCKET}.{key}" for key in LEASE_KEYS[user]),  # its leases
                f"$KV.{user}.>",  # a KV bucket named after the service is its own
            ],
            "deny": list(_DENIED_API),
        },
        "subscribe": {"allow": ["_INBOX.>", "$JS.EVENT.ADVISORY.>"]},
    }


def new_password() -> str:
    """URL-safe (it travels in ``NATS_URL``) and long."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Credentials:
    """Every user's password, kept in ``<dir>/users.json`` (mode 0600)."""

    passwords: dict[str, str]

    @classmethod
    def load_or_create(cls, directory: Path) -> Credentials:
        """Read the passwords made by an earlier run, adding any missing user; else make
        fresh ones. Reusing them lets a service started on its own still connect."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "users.json"
        stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        passwords = {user: stored.get(user) or new_password() for user in USERS}
        if passwords != stored:
            _write_private(path, json.dumps(passwords, indent=2) + "\n")
        return cls(passwords)

    def url(self, user: str, servers: list[str]) -> str:
        """``NATS_URL`` for ``user``: every server, each carrying the user and password."""
        return ",".join(with_credentials(s, user, self.passwords[user]) for s in servers)

    def write_urls(self, directory: Path, servers: list[str]) -> None:
        """``<user>.url`` for every user (mode 0600): ``observer.url`` is the contract's;
        the others let an operator start a service by hand."""
        for user in USERS:
            _write_private(directory / f"{user}.url", self.url(user, servers) + "\n")


def authorization_block(passwords: dict[str, str] | None) -> str:
    """The ``authorization`` block of a nats-server configuration.

    With ``passwords=None`` each password is the environment variable
    ``NATS_<USER>_PASSWORD``, which nats-server resolves at start (compose)."""
    lines = ["authorization {", "  users: ["]
    for user in USERS:
        password = (
            f"$NATS_{user.upper()}_PASSWORD" if passwords is None else json.dumps(passwords[user])
        )
        entry = f"    {{user: {json.dumps(user)}, password: {password}"
        perms = permissions(user)
        if perms is not None:
            entry += f", permissions: {json.dumps(perms)}"
        lines.append(entry + "}")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def compose_config(nodes: list[str]) -> str:
    """``deploy/nats/nats.conf``: one file for every node of the compose cluster. The node
    names itself with ``NATS_SERVER_NAME``; passwords come from the environment."""
    routes = json.dumps([f"nats://{node}:6222" for node in nodes])
    return (
        "# Generated by shared.natsauth.compose_config; tests/unit/test_compose.py checks it.\n"
        "# Every node of docker-compose.yml runs this file; each sets NATS_SERVER_NAME and\n"
        "# the NATS_<USER>_PASSWORD variables. Without a default user, anonymous clients are refused.\n"
        "server_name: $NATS_SERVER_NAME\n"
        'listen: "0.0.0.0:4222"\n'
        "http: 8222\n"
        'jetstream { store_dir: "/data" }\n'
        f'cluster {{ name: "clinic", listen: "0.0.0.0:6222", routes: {routes} }}\n'
        + authorization_block(None)
    )


# -- URLs -------------------------------------------------------------------------------


def with_credentials(server: str, user: str, password: str) -> str:
    parts = urlsplit(server if "://" in server else f"nats://{server}")
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


@dataclass(frozen=True)
class Servers:
    """A ``NATS_URL`` taken apart: the server URLs without credentials, and the user."""

    urls: list[str]
    user: str | None
    password: str | None


def parse_servers(nats_url: str) -> Servers:
    """Split a comma-separated ``NATS_URL``; the first credentials found are the user's."""
    urls: list[str] = []
    user = password = None
    for raw in nats_url.split(","):
        raw = raw.strip()
        if not raw:
            continue
        parts = urlsplit(raw if "://" in raw else f"nats://{raw}")
        if parts.username is not None and user is None:
            user, password = parts.username, parts.password
        host = parts.netloc.rsplit("@", 1)[-1]
        urls.append(urlunsplit(parts._replace(netloc=host)))
    return Servers(urls, user, password)


def redact(nats_url: str) -> str:
    """``NATS_URL`` fit for a log line: the user stays, the password goes."""
    servers = parse_servers(nats_url)
    if servers.user is None:
        return ",".join(servers.urls)
    return ",".join(with_credentials(u, servers.user, "***") for u in servers.urls)


def anonymous(nats_url: str) -> bool:
    """True when ``NATS_URL`` names no user: the development default, refused in production."""
    servers = parse_servers(nats_url)
    return servers.user is None or not servers.password


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by the owner only, never briefly readable by others."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
