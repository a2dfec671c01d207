"""The clinic's set-up held in memory per process, checked against the database at every use.

What a booking and an availability answer need besides sessions and time off is the
set-up: the location, the treatment, who works there with which weeks of hours, the
rooms, the closures. Reading it took seven statements of the ten a booking ran. It changes
rarely, so each process keeps it in memory.

Why it can never act on stale set-up, with several replicas on one database: every
change of a set-up table replaces a random token in ``setup_generation`` by trigger, in
the change's own transaction (migration 0007), whoever makes it. Every use
(:meth:`SetupCache.current`) reads the token in the caller's transaction first and, if it
differs from the one the copy was loaded under, reloads the copy in that same
transaction (token first, then the tables: on PostgreSQL's READ COMMITTED the copy is then
at least as new as its token says). So a booking sees exactly what it would have read
from the tables at that point of its transaction, for the price of one small read. Why
not refresh from the change events booking publishes: they arrive after the commit, a
replica would book on the old hours for that moment, and not every set-up change is
announced. Why random and not a counter: a change that rolls back leaves the old token,
and a value seen inside it never comes back.

If the token row or any trigger is missing (a database not migrated to 0007, a later
migration that rebuilt a table on SQLite), nothing is cached: every use reads the tables.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.booking import db, domain
from shared import events
from shared.auth import Scope
from shared.errors import NotFound
from shared.timeutil import zone

log = structlog.get_logger(__name__)

#: The tables whose changes move the token (as migration 0007 lists them).
WATCHED = (
    "locations",
    "rooms",
    "treatments",
    "therapists",
    "working_hours",
    "working_weeks",
    "closures",
)

_GENERATION = db.SetupGeneration.__table__
#: A Core select of the table, not the mapped class: it runs on every availability answer
#: and booking, and the ORM's compile and result steps cost about a tenth of its CPU time.
TOKEN = select(_GENERATION.c.token).where(_GENERATION.c.id == 1)

_SQLITE_TRIGGERS = text(
    "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%_setup_%'"
)
_PG_TRIGGERS = text(
    "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE '%_setup_changed'"
)


@dataclass(frozen=True)
class LocationInfo:
    id: str
    name: str
    timezone: str
    tz: ZoneInfo
    late_cancel_hours: int
    policy: domain.BookingPolicy
    ref: events.LocationRef


@dataclass(frozen=True)
class TreatmentInfo:
    id: str
    modality: str
    duration_minutes: int
    buffer_minutes: int
    active: bool
    rule: domain.Treatment
    ref: events.ServiceRef


@dataclass(frozen=True)
class TherapistInfo:
    id: str
    modalities: frozenset[str]
    active: bool
    #: Every location the therapist has hours at, in any version of their week.
    locations: frozenset[str]
    #: Every row of every version, each bounded by the next version's start.
    hours: tuple[domain.WeeklyHours, ...]
    ref: events.TherapistRef


@dataclass
class Setup:
    """One consistent copy of the set-up tables."""

    locations: dict[str, LocationInfo]
    treatments: dict[str, TreatmentInfo]
    therapists: dict[str, TherapistInfo]
    #: Active rooms of each location, sorted by id.
    rooms: dict[str, tuple[str, ...]]
    #: Closures of each location, sorted by start.
    closures: dict[str, list[domain.Interval]]
    _staff: dict[tuple[str, str], list[TherapistInfo]] = field(default_factory=dict)

    def location(self, location_id: str, scope: Scope) -> LocationInfo:
        found = self.locations.get(location_id)
        if found is None or not scope.allows(location_id):
            raise NotFound("location", location_id)
        return found

    def treatment(self, treatment_id: str) -> TreatmentInfo:
        found = self.treatments.get(treatment_id)
        if found is None:
            raise NotFound("service", treatment_id)
        return found

    def therapist(self, therapist_id: str, scope: Scope | None = None) -> TherapistInfo:
        """The therapist; with ``scope``, only one with hours at a location in it."""
        found = self.therapists.get(therapist_id)
        if found is None or (
            scope is not None
            and not scope.everything
            and not any(scope.allows(loc) for loc in found.locations)
        ):
            raise NotFound("therapist", therapist_id)
        return found

    def staff(self, location_id: str, modality: str) -> list[TherapistInfo]:
        """Active therapists with hours at ``location_id`` who do ``modality``, by id."""
        key = (location_id, modality)
        found = self._staff.get(key)
        if found is None:
            found = self._staff[key] = [
                t
                for _, t in sorted(self.therapists.items())
                if t.active and location_id in t.locations and modality in t.modalities
            ]
        return found

    def closed(self, location_id: str, start: datetime, end: datetime) -> list[domain.Interval]:
        """The closures of the location that overlap ``[start, end)``."""
        return [c for c in self.closures.get(location_id, ()) if c.start < end and c.end > start]


class SetupCache:
    """The process's copy of the set-up, validated by the token in each transaction."""

    def __init__(self) -> None:
        self._token: str | None = None
        self._setup: Setup | None = None
        self._usable: bool | None = None  # triggers checked once per process

    async def current(self, session: AsyncSession, token: str | None = None) -> Setup:
        """The set-up as ``session``'s transaction sees it. ``token`` when the caller read
        it already (in the same transaction, with another query)."""
        if token is None:
            token = await session.scalar(TOKEN)
        if token is not None and token == self._token and self._setup is not None:
            return self._setup
        setup = await load(session)
        if token is not None and await self._triggers_present(session):
            self._token, self._setup = token, setup
        return setup

    async def _triggers_present(self, session: AsyncSession) -> bool:
        if self._usable is None:
            dialect = session.get_bind().dialect.name
            found = await session.scalar(
                _PG_TRIGGERS if dialect == "postgresql" else _SQLITE_TRIGGERS
            )
            expected = len(WATCHED) * (1 if dialect == "postgresql" else 3)
            self._usable = (found or 0) >= expected
            if not self._usable:
                log.warning("setup_cache.disabled", triggers=found, expected=expected)
        return self._usable


async def load(session: AsyncSession) -> Setup:
    """Read every set-up table (a handful of rows per location) into a :class:`Setup`."""
    locations = {
        row.id: LocationInfo(
            id=row.id,
            name=row.name,
            timezone=row.timezone,
            tz=zone(row.timezone),
            late_cancel_hours=row.late_cancel_hours,
            policy=domain.BookingPolicy(
                min_notice=timedelta(minutes=row.min_notice_minutes),
                horizon=timedelta(days=row.horizon_days),
                step=timedelta(minutes=row.slot_step_minutes),
            ),
            ref=events.LocationRef(
                id=row.id,
                name=row.name,
                timezone=row.timezone,
                address=row.address,
                phone=row.phone,
            ),
        )
        for row in await session.execute(select(db.Location.__table__))
    }
    treatments = {
        row.id: TreatmentInfo(
            id=row.id,
            modality=row.modality,
            duration_minutes=row.duration_minutes,
            buffer_minutes=row.buffer_minutes,
            active=row.active,
            rule=domain.Treatment(row.id, row.modality, row.duration_minutes, row.buffer_minutes),
            ref=events.ServiceRef(
                id=row.id,
                name=row.name,
                modality=row.modality,
                duration_minutes=row.duration_minutes,
            ),
        )
        for row in await session.execute(select(db.Treatment.__table__))
    }
    week: dict[str, list[domain.WeeklyHours]] = defaultdict(list)
    starts: dict[str, set[date]] = defaultdict(set)
    hours_table = db.WorkingHours.__table__
    for row in await session.execute(
        select(hours_table).order_by(hours_table.c.weekday, hours_table.c.start)
    ):
        week[row.therapist_id].append(
            domain.WeeklyHours(
                row.location_id,
                row.weekday,
                time.fromisoformat(row.start),
                time.fromisoformat(row.end),
                valid_from=row.effective_from,
            )
        )
        starts[row.therapist_id].add(row.effective_from)
    weeks = db.WorkingWeek.__table__
    for tid, since in await session.execute(select(weeks.c.therapist_id, weeks.c.effective_from)):
        starts[tid].add(since)
    therapists = {}
    for row in await session.execute(select(db.Therapist.__table__)):
        rows = week.get(row.id, [])
        therapists[row.id] = TherapistInfo(
            id=row.id,
            modalities=frozenset(row.modalities or ()),
            active=row.active,
            locations=frozenset(h.location_id for h in rows),
            hours=tuple(_bounded(rows, sorted(starts.get(row.id, ())))),
            ref=events.TherapistRef(id=row.id, display_name=row.name),
        )
    rooms: dict[str, list[str]] = defaultdict(list)
    room_table = db.Room.__table__
    for rid, lid in await session.execute(
        select(room_table.c.id, room_table.c.location_id).where(room_table.c.active)
    ):
        rooms[lid].append(rid)
    closures: dict[str, list[domain.Interval]] = defaultdict(list)
    closure_table = db.Closure.__table__
    for lid, start, end in await session.execute(
        select(
            closure_table.c.location_id, closure_table.c.start_at, closure_table.c.end_at
        ).order_by(closure_table.c.start_at)
    ):
        closures[lid].append(domain.Interval(start, end))
    return Setup(
        locations=locations,
        treatments=treatments,
        therapists=therapists,
        rooms={lid: tuple(sorted(ids)) for lid, ids in rooms.items()},
        closures=dict(closures),
    )


def _bounded(hours: list[domain.WeeklyHours], starts: list[date]) -> list[domain.WeeklyHours]:
    """``hours`` ending where the therapist's next version starts (as ``hours.bounded``)."""
    out = []
    for h in hours:
        since = h.valid_from or db.FIRST_DAY
        i = bisect.bisect_right(starts, since)
        out.append(
            domain.WeeklyHours(
                h.location_id,
                h.weekday,
                h.start,
                h.end,
                valid_from=h.valid_from,
                valid_until=starts[i] if i < len(starts) else None,
            )
        )
    return out


__all__ = ["LocationInfo", "Setup", "SetupCache", "TherapistInfo", "TreatmentInfo"]
