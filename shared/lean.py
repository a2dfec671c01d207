"""Keeps modules a service never uses out of its process; imported first by each
service's ``__main__``.

``rich`` (with ``pygments``) arrives with the dev extras (schemathesis), which the lock and
the image install. structlog imports it whenever it can, for coloured tracebacks on a
console: about 5 MB of every service's RSS (issue 12's idle floor is 100 MB) for nothing a
service prints. Marking it absent makes structlog print plain tracebacks, as it does
where rich is not installed. Tests and tools, which may want it, never import this.
"""

from __future__ import annotations

import sys

#: Absent for the service's process (``import rich`` raises ``ImportError``).
UNUSED = ("rich",)

for _name in UNUSED:
    sys.modules.setdefault(_name, None)  # type: ignore[arg-type]
