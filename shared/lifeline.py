"""Children that do not outlive their launcher.

``make run`` and the benchmarks start servers (nats-server, the services, the sandbox) as
child processes. When the launcher is killed (SIGKILL, the OOM killer, a test's timeout) it
cannot stop them, and they would run on as orphans holding their ports, their databases and
the machine's CPU. On Linux the kernel sends them SIGTERM instead (``PR_SET_PDEATHSIG``),
and each stops as it does on Ctrl-C.

The signal comes when the *thread* that started the child ends: start such children from
the launcher's main thread (never from ``asyncio.to_thread``).
"""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1

try:  # loaded here, not between fork and exec
    _LIBC: Any = (
        ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform.startswith("linux") else None
    )
except OSError:
    _LIBC = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


#: ``preexec_fn`` of a child that gets SIGTERM when its launcher dies (``None`` off Linux).
DIES_WITH_PARENT: Callable[[], None] | None = _die_with_parent if _LIBC is not None else None
