"""Statistics and output: percentiles, the result table, the JSON line, what the service
logged, and which machine and code a figure comes from."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from bench.harness.processes import PROJECT_ROOT, log


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
        "speed_probe_ms": speed_probe_ms(),
    }


def speed_probe_ms() -> float:
    """How fast this machine runs plain Python right now: the median of three timings of
    ``sum(range(10**7))``. The same code measured 98-227 ms within one hour here, so an
    absolute figure (availability's p99, CPU per text) is comparable across runs only
    beside it; a ratio to an anchor measured in the same run needs no probe."""
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        sum(range(10**7))
        timings.append((time.perf_counter() - started) * 1000)
    return round(sorted(timings)[1], 1)


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
