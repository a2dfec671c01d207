"""Keeps modules a service never uses out of its process; imported first by each
service's ``__main__``.

Each one below is imported by a library only when it can be, and the library does without
it; a service never needs what it brings. Marking them absent keeps them out of every
service's RSS (issue 12's idle floor is 100 MB):

- ``rich`` (with ``pygments``, about 5 MB) arrives with the dev extras (schemathesis),
  which the lock and the image install. structlog imports it for coloured tracebacks on
  a console; without it structlog prints plain tracebacks.
- ``pydantic.v1`` (about 1.2 MB): FastAPI looks for it to recognise pydantic-v1 models;
  ours are all v2.
- ``pytz`` (0.6 MB): Babel formats with it when present, else with ``zoneinfo``, which
  is what every timezone here is.
- ``chardet``/``charset_normalizer`` (2.7 MB): ``requests`` guesses response encodings
  with them. twilio imports ``requests`` for its blocking client; reminders sends with the
  aiohttp one, and nothing else here uses ``requests``.

Tests and tools, which may want them, never import this.
"""

from __future__ import annotations

import sys
import warnings

#: Absent for the service's process (``import rich`` raises ``ImportError``).
UNUSED = ("rich", "pydantic.v1", "pytz", "chardet", "charset_normalizer")

for _name in UNUSED:
    sys.modules.setdefault(_name, None)  # type: ignore[arg-type]

# requests says once, at import, that it has no encoding detector: nothing here needs one.
warnings.filterwarnings("ignore", message="Unable to find acceptable character detection")
