"""A clinic described in a few lines and created through booking's HTTP API.

Tests, benchmarks and the demo seed all need locations, rooms, treatments, therapists with
weekly hours and clients. :class:`ClinicBuilder` holds what to create (defaults for every
field, overrides where a caller cares) and creates it in order with the admin key, as any
front desk would; the answer is a :class:`Clinic` with each created resource's JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from tools.kit.calls import Call, Steps, run, run_sync

EVERY_DAY = range(7)


@dataclass(frozen=True)
class Hours:
    """A therapist's hours at one location (an index from :meth:`ClinicBuilder.location`)."""

    location: int
    weekdays: Iterable[int] = EVERY_DAY
    start: str = "09:00"
    end: str = "17:00"


@dataclass
class Clinic:
    """What the builder created: the API's answer for each resource, in creation order."""

    locations: list[dict[str, Any]] = field(default_factory=list)
    rooms: list[dict[str, Any]] = field(default_factory=list)
    treatments: list[dict[str, Any]] = field(default_factory=list)
    therapists: list[dict[str, Any]] = field(default_factory=list)
    clients: list[dict[str, Any]] = field(default_factory=list)

    @property
    def location(self) -> dict[str, Any]:
        return self.locations[0]

    @property
    def treatment(self) -> dict[str, Any]:
        return self.treatments[0]

    @property
    def client(self) -> dict[str, Any]:
        return self.clients[0]

    def ids(self, kind: str) -> list[str]:
        """``ids("therapists")``: the ids of one kind of resource."""
        return [str(row["id"]) for row in getattr(self, kind)]

    def session_body(
        self,
        start: datetime | str,
        *,
        client: int = 0,
        treatment: int = 0,
        location: int = 0,
        **extra: Any,
    ) -> dict[str, Any]:
        """The body of ``POST /v1/sessions`` for one of the created clients."""
        return {
            "client_id": self.clients[client]["id"],
            "service_id": self.treatments[treatment]["id"],
            "location_id": self.locations[location]["id"],
            "start": start.isoformat() if isinstance(start, datetime) else start,
            **extra,
        }


@dataclass
class _Location:
    body: dict[str, Any]
    rooms: list[str]


class ClinicBuilder:
    """Describe a clinic, then :meth:`create` it (or :meth:`create_sync` from blocking code)."""

    def __init__(self) -> None:
        self._locations: list[_Location] = []
        self._treatments: list[dict[str, Any]] = []
        self._therapists: list[tuple[dict[str, Any], Sequence[Hours] | None]] = []
        self._clients: list[dict[str, Any]] = []

    def location(
        self,
        name: str = "Downtown",
        *,
        rooms: int | Sequence[str] = 1,
        timezone: str = "America/New_York",
        address: str = "1 Main St",
        phone: str = "+12125550100",
        **settings: Any,
    ) -> int:
        """A location and its rooms (a count, or their names); returns its index for
        :class:`Hours`. ``settings``: ``min_notice_minutes``, ``horizon_days``, ..."""
        names = [f"Room {n + 1}" for n in range(rooms)] if isinstance(rooms, int) else rooms
        body = {"name": name, "timezone": timezone, "address": address, "phone": phone}
        self._locations.append(_Location({**body, **settings}, list(names)))
        return len(self._locations) - 1

    def treatment(
        self,
        name: str = "Medical massage 60",
        *,
        modality: str = "medical_massage",
        duration_minutes: int = 60,
        buffer_minutes: int = 15,
    ) -> ClinicBuilder:
        self._treatments.append(
            {
                "name": name,
                "modality": modality,
                "duration_minutes": duration_minutes,
                "buffer_minutes": buffer_minutes,
            }
        )
        return self

    def therapist(
        self,
        name: str,
        *,
        modalities: Sequence[str] = ("medical_massage",),
        hours: Sequence[Hours] | None = None,
    ) -> ClinicBuilder:
        """A therapist; without ``hours``, every day 09:00-17:00 at the first location."""
        self._therapists.append(({"name": name, "modalities": list(modalities)}, hours))
        return self

    def client(
        self,
        first_name: str = "Maria",
        last_name: str = "Lopez",
        *,
        phone: str = "+12125550199",
        sms_consent: bool = True,
        **fields: Any,
    ) -> ClinicBuilder:
        self._clients.append(
            {
                "first_name": first_name,
                "last_name": last_name,
                "phone": phone,
                "sms_consent": sms_consent,
                **fields,
            }
        )
        return self

    def steps(self) -> Steps[Clinic]:
        """The requests, in dependency order (see :mod:`tools.kit.calls`)."""
        made = Clinic()
        for spec in self._locations:
            location = yield Call("POST", "/v1/locations", spec.body, expect=(201,))
            made.locations.append(location)
            for room in spec.rooms:
                path = f"/v1/locations/{location['id']}/rooms"
                made.rooms.append((yield Call("POST", path, {"name": room}, expect=(201,))))
        for body in self._treatments:
            made.treatments.append((yield Call("POST", "/v1/services", body, expect=(201,))))
        for body, hours in self._therapists:
            week = [
                {
                    "location_id": made.locations[h.location]["id"],
                    "weekday": day,
                    "start": h.start,
                    "end": h.end,
                }
                for h in (hours if hours is not None else [Hours(0)])
                for day in h.weekdays
            ]
            body = {**body, "working_hours": week}
            made.therapists.append((yield Call("POST", "/v1/therapists", body, expect=(201,))))
        for body in self._clients:
            made.clients.append((yield Call("POST", "/v1/clients", body, expect=(201,))))
        return made

    async def create(self, client: httpx.AsyncClient) -> Clinic:
        return await run(client, self.steps())

    def create_sync(self, client: httpx.Client) -> Clinic:
        return run_sync(client, self.steps())
