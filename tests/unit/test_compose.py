"""docker-compose.yml: valid per the Compose Specification, and in step with ``make run``.

There is no Docker engine here, so the file is checked statically: against the
Compose Specification's JSON schema (kept beside the project), and against
``tools.commands`` so that compose starts each service exactly as ``make run`` does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shared.natsauth import USERS, compose_config, parse_servers
from shared.natsd import nats_server_binary
from tools.commands import MIGRATE_COMMANDS, SERVICE_COMMANDS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SPEC_FILE = ROOT.parent / "shared" / "data" / "compose-spec" / "compose-spec.json"

NATS_NODES = ("nats-1", "nats-2", "nats-3")
INFRA = (*NATS_NODES, "postgres")
NATS_CONFIG = ROOT / "deploy" / "nats" / "nats.conf"
CADDYFILE = ROOT / "deploy" / "Caddyfile"
PORTS = {"booking": "8001", "reminders": "8002", "referrals": "8003"}
#: ``${VAR:?message}``: compose refuses to start when VAR is unset or empty.
REQUIRED_VAR = re.compile(r"^\$\{(?P<name>[A-Z_][A-Z0-9_]*):\?[^}]*\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment as a mapping, whichever of the two spellings it uses."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {k: None if v is None else str(v) for k, v in env.items()}
    pairs = (item.split("=", 1) for item in env)
    return {p[0]: (p[1] if len(p) == 2 else None) for p in pairs}


def _built_here(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services.items() if "build" in svc}


def _healthy_dependencies(service: dict[str, Any]) -> set[str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):  # the short form waits for nothing but the start
        return set()
    return {name for name, d in deps.items() if d.get("condition") == "service_healthy"}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert isinstance(command, list), f"command must be a list, not a shell string: {command!r}"
    return command


def test_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    if not SPEC_FILE.is_file():
        pytest.skip(f"Compose Specification schema not found at {SPEC_FILE}")
    schema = json.loads(SPEC_FILE.read_text())
    # The spec declares https://json-schema.org/draft-07/schema, a spelling
    # jsonschema does not map to a draft by itself; honour it explicitly.
    declared = schema.get("$schema", "")
    validator_cls = jsonschema.validators.validator_for(schema, default=None)
    if validator_cls is None:
        assert "draft-07" in declared, f"unknown JSON Schema dialect {declared!r}"
        validator_cls = jsonschema.Draft7Validator
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors
    )


def test_every_service_is_started_as_make_run_starts_it(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, command in SERVICE_COMMANDS.items():
        assert name in services, f"{name} is in tools.commands but not in docker-compose.yml"
        assert _command(services[name]) == command, f"{name} starts differently from make run"


def test_every_image_service_runs_a_known_command(services: dict[str, dict[str, Any]]) -> None:
    built = _built_here(services)
    assert set(SERVICE_COMMANDS) <= set(built), "every service runs from the project's image"
    for name, svc in built.items():
        if name in SERVICE_COMMANDS:
            continue
        migrated = name.removesuffix("-migrate")
        assert name.endswith("-migrate") and migrated in MIGRATE_COMMANDS, (
            f"{name} is built from the Dockerfile but is not in tools.commands"
        )
        assert _command(svc) == MIGRATE_COMMANDS[migrated]


def test_app_services_wait_for_healthy_nats_and_postgres(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, svc in _built_here(services).items():
        missing = set(INFRA) - _healthy_dependencies(svc)
        assert not missing, f"{name} does not wait for {sorted(missing)} to be healthy"


def test_services_start_after_their_migration(services: dict[str, dict[str, Any]]) -> None:
    for name in SERVICE_COMMANDS.keys() & MIGRATE_COMMANDS.keys():
        deps = services[name].get("depends_on") or {}
        assert isinstance(deps, dict)
        condition = deps.get(f"{name}-migrate", {}).get("condition")
        assert condition == "service_completed_successfully", f"{name} starts before migrating"
        assert services[f"{name}-migrate"].get("restart", "no") == "no"


def test_infrastructure_has_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in (*INFRA, *SERVICE_COMMANDS):
        test = services[name].get("healthcheck", {}).get("test")
        assert test and not services[name]["healthcheck"].get("disable"), f"{name}: no healthcheck"


def test_nats_is_a_three_node_jetstream_cluster_on_volumes(compose: dict[str, Any]) -> None:
    config = NATS_CONFIG.read_text()
    assert 'jetstream { store_dir: "/data" }' in config, "JetStream is off or not on /data"
    names = set()
    for name in NATS_NODES:
        node = compose["services"][name]
        assert node["command"] == ["-c", "/etc/nats/nats.conf"]
        mounts = {v.split(":")[0]: v.split(":")[1] for v in node["volumes"]}
        assert mounts["./deploy/nats/nats.conf"] == "/etc/nats/nats.conf"
        assert "/data" in mounts.values(), f"{name}: the JetStream store is lost with the container"
        assert "js-enabled-only=true" in " ".join(node["healthcheck"]["test"])
        assert "ports" not in node, f"{name}: NATS is published outside the compose network"
        names.add(_environment(node)["NATS_SERVER_NAME"])
        assert f'"nats://{name}:6222"' in config, f"{name} is not among the routes"
    assert len(names) == 3, "every node needs its own server name"
    volumes = {v.split(":")[0] for n in NATS_NODES for v in compose["services"][n]["volumes"]}
    assert len(volumes - {"./deploy/nats/nats.conf"}) == 3, "each node needs its own store"


def test_nats_users_are_the_generated_ones_and_anonymous_is_refused(
    services: dict[str, dict[str, Any]],
) -> None:
    """The compose configuration is the one shared.natsauth generates (same users, same
    permissions), nats-server accepts it, and every password is required."""
    config = NATS_CONFIG.read_text()
    assert config == compose_config(list(NATS_NODES)), (
        "deploy/nats/nats.conf is out of date: regenerate it with shared.natsauth.compose_config"
    )
    assert "no_auth_user" not in config
    env = {"NATS_SERVER_NAME": "nats-1"}
    for user in USERS:
        variable = f"NATS_{user.upper()}_PASSWORD"
        env[variable] = "x"
        for name in NATS_NODES:
            match = REQUIRED_VAR.match(_environment(services[name]).get(variable) or "")
            assert match and match["name"] == variable, f"{name}: {variable} is not required"
    checked = subprocess.run(
        [nats_server_binary(), "-c", str(NATS_CONFIG), "-t"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_app_services_are_replicated_behind_the_entry_and_production(
    services: dict[str, dict[str, Any]],
) -> None:
    entry = services["entry"]
    assert entry["image"].split(":")[0] in {"caddy", "nginx"}
    caddyfile = CADDYFILE.read_text()
    for name in SERVICE_COMMANDS:
        env = _environment(services[name])
        upper = name.upper()
        port = env.get(f"{upper}_PORT")
        assert port == PORTS[name], f"{name}: {upper}_PORT is not {PORTS[name]}"
        assert f"{port}:{port}" in [str(p) for p in entry.get("ports", [])]
        assert f":{port} {{\n\timport replicas {name} {port}" in caddyfile
        # The service binds 127.0.0.1 unless told otherwise: unreachable from the entry.
        assert env.get(f"{upper}_HOST") == "0.0.0.0"
        assert "ports" not in services[name], f"{name}: replicas cannot share a host port"
        assert services[name].get("deploy", {}).get("replicas", 1) >= 2
        assert (env.get(f"{upper}_DATABASE_URL") or "").startswith("postgresql://")
        assert env.get("APP_ENV") == "production"
        assert env.get("PUBLIC_BASE_URL")
        assert env.get("NATS_REPLICAS") == "3"


def test_each_service_connects_to_every_node_as_its_own_user(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, svc in _built_here(services).items():
        service = name.removesuffix("-migrate")
        nats_url = _environment(svc).get("NATS_URL") or ""
        variable = f"NATS_{service.upper()}_PASSWORD"
        references = re.findall(r"\$\{[^}]*\}", nats_url)
        assert len(references) == 3, f"{name}: one password per server"
        for reference in references:
            match = REQUIRED_VAR.match(reference)
            assert match and match["name"] == variable, (
                f"{name}: the NATS password must be the required {variable}, not {reference}"
            )
        servers = parse_servers(re.sub(r"\$\{[^}]*\}", "secret", nats_url))
        assert servers.urls == [f"nats://{node}:4222" for node in NATS_NODES], name
        assert (servers.user, servers.password) == (service, "secret"), name


def test_no_secret_default_is_baked_in(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in _built_here(services).items():
        key = _environment(svc).get("ADMIN_API_KEY")
        if name in SERVICE_COMMANDS:
            assert key is not None, f"{name}: ADMIN_API_KEY is not passed through"
        if key is not None:
            match = REQUIRED_VAR.match(key)
            assert match and match["name"] == "ADMIN_API_KEY", (
                f"{name}: ADMIN_API_KEY must be required (${{ADMIN_API_KEY:?...}}), got {key!r}"
            )


def test_bind_mounted_files_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
            if source and source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
