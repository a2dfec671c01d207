"""The test kit: a clinic built over booking's HTTP API, referrals' request bodies, and the
contract's events with defaults; used by the tests, the benchmarks and the demo seed.

- :mod:`tools.kit.calls`: HTTP calls as data (one builder for sync and async clients);
- :mod:`tools.kit.clinic`: :class:`ClinicBuilder` (locations, rooms, treatments, therapists,
  clients) and the :class:`Clinic` it made;
- :mod:`tools.kit.care`: partner, care plan and referral bodies;
- :mod:`tools.kit.events`: event factories, :class:`SessionStory`, :func:`publish`.

It talks to the services as a client would (HTTP with an API key, NATS), never through
their code.
"""

from tools.kit.calls import Call, CallFailed, bearer, call, call_sync, run, run_sync
from tools.kit.clinic import Clinic, ClinicBuilder, Hours

__all__ = [
    "Call",
    "CallFailed",
    "Clinic",
    "ClinicBuilder",
    "Hours",
    "bearer",
    "call",
    "call_sync",
    "run",
    "run_sync",
]
