"""Shared helpers of the benchmark scripts: child processes, the load driver, statistics.

The benchmarks start every server the way production does, as its own process
(``python -m services.booking`` under uvicorn, the ``nats-server`` binary), on 127.0.0.1
with free ports and a temporary directory, and talk to it over real HTTP with
``httpx.AsyncClient``. :class:`Stack` owns those processes and the directory and tears
them down on every exit path: normal return, exception, Ctrl-C, SIGTERM/SIGHUP, and (for
the children it starts itself) the death of the benchmark process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from shared.natsauth import with_credentials  # noqa: E402
from shared.natsd import EmbeddedNats, free_port, port_open  # noqa: E402

#: Environment variables of the parent that would change what the service under test does.
_SCRUBBED_ENV = (
    "BOOKING_DATABASE_URL",
    "BOOKING_HOST",
    "BOOKING_PORT",
    "PUBLIC_BASE_URL",
    "NATS_URL",
    "VAR_DIR",
    "ADMIN_API_KEY",
    "APP_ENV",
    "MIGRATE_ON_START",
    "OUTBOX_POLL_SECONDS",
)


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the result table and the JSON line."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


try:  # loaded here, not between fork and exec
    _LIBC: Any = (
        ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform.startswith("linux") else None
    )
except OSError:
    _LIBC = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the benchmark process dies, even by SIGKILL."""
    _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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
            preexec_fn=_die_with_parent if _LIBC is not None else None,
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

    def booking_env(self, port: int, database_url: str | None = None) -> dict[str, str]:
        """The environment of ``python -m services.booking``, as compose sets it."""
        if self.nats_url is None:
            raise RuntimeError("start NATS first")
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env.update(
            # Production connects as a NATS user (this server takes any).
            NATS_URL=with_credentials(self.nats_url, "booking", "bench"),
            BOOKING_PORT=str(port),
            VAR_DIR=str(self.tmp / "var"),
            ADMIN_API_KEY=self.admin_key,
            APP_ENV="production",
            PYTHONUNBUFFERED="1",
        )
        if database_url:
            env["BOOKING_DATABASE_URL"] = database_url
        return env

    async def start_booking(self, database_url: str | None = None) -> tuple[Child, str]:
        """Start the booking service and wait until ``/readyz`` says database and NATS are up."""
        port = free_port()
        child = self.start_child(
            "booking",
            [sys.executable, "-m", "services.booking"],
            self.booking_env(port, database_url),
        )
        base = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        await child.wait_ready(f"{base}/readyz", timeout=60)
        log(
            f"booking on {base} ready in {time.perf_counter() - started:.1f}s (log {child.log_path})"
        )
        return child, base

    @property
    def booking_db_path(self) -> Path:
        """The default SQLite file of booking under ``VAR_DIR`` (see ``sqlite_url``)."""
        return self.tmp / "var" / "booking.db"

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


# ---------------------------------------------------------------------------------------
# HTTP and load


def api_client(base: str, key: str | None = None, *, timeout: float = 30.0) -> httpx.AsyncClient:
    """One client = one keep-alive connection (like one front-desk terminal or one web worker)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        base_url=base,
        headers=headers,
        timeout=timeout,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )


async def call(
    client: httpx.AsyncClient, method: str, url: str, *, expect: int = 200, **kwargs: Any
) -> Any:
    """A set-up request that must succeed; the error names the answer when it does not."""
    response = await client.request(method, url, **kwargs)
    if response.status_code != expect:
        raise RuntimeError(
            f"{method} {url} -> {response.status_code} (expected {expect}): {response.text[:500]}"
        )
    return response.json()


@dataclass
class LoadResult:
    latencies_ms: list[float]
    statuses: Counter[int]
    errors: Counter[str]
    wall_s: float
    bodies: list[tuple[int, Any]]

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    def count(self, status: int) -> int:
        return self.statuses.get(status, 0)

    def rate(self, status: int | None = None) -> float:
        n = self.requests if status is None else self.count(status)
        return n / self.wall_s if self.wall_s > 0 else 0.0


async def drive(
    clients: Sequence[httpx.AsyncClient],
    items: Iterable[Any],
    send: Callable[[httpx.AsyncClient, Any], Awaitable[httpx.Response]],
    *,
    keep_bodies: bool = False,
) -> LoadResult:
    """Closed-loop load: one task per client, each sends the next item as soon as it is done.

    Latency is measured around ``send`` (request out to response fully read); the rate is
    requests over the wall time from the first send to the last answer.
    """
    source = iter(items)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    bodies: list[tuple[int, Any]] = []

    async def worker(client: httpx.AsyncClient) -> None:
        for item in source:
            started = time.perf_counter()
            try:
                response = await send(client, item)
            except httpx.HTTPError as exc:
                latencies.append((time.perf_counter() - started) * 1000)
                errors[type(exc).__name__] += 1
                statuses[0] += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[response.status_code] += 1
            if keep_bodies or response.status_code >= 300:
                try:
                    body: Any = response.json()
                except ValueError:
                    body = response.text[:300]
                bodies.append((response.status_code, body))

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    wall = time.perf_counter() - started
    return LoadResult(latencies, statuses, errors, wall, bodies)


# ---------------------------------------------------------------------------------------
# Statistics and output


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 50), 2),
        "p90_ms": round(percentile(values, 90), 2),
        "p99_ms": round(percentile(values, 99), 2),
        "mean_ms": round(sum(values) / len(values), 2) if values else float("nan"),
        "max_ms": round(max(values), 2) if values else float("nan"),
    }


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def emit_json(figures: dict[str, Any], path: Path | None) -> None:
    """One JSON line: appended to ``path``, or printed as the last line of stdout."""
    line = json.dumps(figures, sort_keys=False, default=str)
    if path is None:
        print(line, flush=True)
    else:
        with path.open("a") as out:
            out.write(line + "\n")
        log(f"figures appended to {path}")


def service_log_findings(text: str) -> dict[str, int]:
    """Warnings, errors and tracebacks the service logged, counted by event or exception."""
    found: Counter[str] = Counter()
    in_traceback = False
    for line in text.splitlines():
        if in_traceback:
            if line[:1].isspace() or line.startswith("^"):
                continue
            found[f"traceback: {line.strip()[:100]}"] += 1
            in_traceback = False
            continue
        if line.startswith("Traceback"):
            in_traceback = True
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            if line.startswith(("ERROR", "CRITICAL")):
                found[line[:100]] += 1
            continue
        if isinstance(entry, dict) and entry.get("level") in {"warning", "error", "critical"}:
            found[f"{entry.get('level')}: {entry.get('event')}"] += 1
    return dict(found)


def machine() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "platform": sys.platform,
    }


def code_fingerprint() -> dict[str, str]:
    """Which code was measured: a digest of ``services/booking/`` and ``shared/`` (what the
    booking process runs) and their newest edit.

    The services change while benchmarks are run; this ties each figure to a code state.
    """
    digest = hashlib.sha256()
    newest = 0.0
    for path in sorted(
        [*PROJECT_ROOT.glob("services/booking/**/*.py"), *PROJECT_ROOT.glob("shared/**/*.py")]
    ):
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
        digest.update(path.read_bytes())
        newest = max(newest, path.stat().st_mtime)
    return {
        "sha256": digest.hexdigest()[:16],
        "newest_edit": datetime.fromtimestamp(newest, UTC).isoformat(timespec="seconds"),
    }


def chunked(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def print_out(text: str, stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stdout, flush=True)
