"""The rules document: the defaults and each location's overrides, as stored (one row per
scope), as the API shows them, and as the planner and the jobs read them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.reminders import db, domain
from services.reminders.settings import RemindersSettings

#: The rules' row for the defaults; the others are keyed by location id.
DEFAULT_SCOPE = "*"
#: How long a job may use rules read by another job (a PUT replans within this anyway).
RULES_CACHE_SECONDS = 1.0


def _rule_from(data: dict[str, Any]) -> domain.Rule:
    return domain.Rule(
        name=str(data["name"]),
        kind=data["kind"],
        offset_minutes=int(data.get("offset_minutes", 0)),
        enabled=bool(data.get("enabled", True)),
    )


def _rule_dict(rule: domain.Rule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "kind": rule.kind,
        "offset_minutes": rule.offset_minutes,
        "enabled": rule.enabled,
    }


@dataclass(frozen=True)
class RulesDocument:
    """The defaults and each location's overrides, as stored and as the API shows them."""

    defaults: domain.RuleSet
    locations: dict[str, tuple[tuple[domain.Rule, ...], domain.QuietHours | None]]

    def for_location(self, location_id: str | None) -> domain.RuleSet:
        if location_id is None or location_id not in self.locations:
            return self.defaults
        rules, quiet = self.locations[location_id]
        return domain.effective_rules(self.defaults, rules, quiet)

    def as_dict(self) -> dict[str, Any]:
        return {
            "defaults": {
                "rules": [_rule_dict(r) for r in self.defaults.rules],
                "quiet_hours": self.defaults.quiet_hours.as_dict(),
            },
            "locations": {
                location_id: {
                    "rules": [_rule_dict(r) for r in rules],
                    "quiet_hours": quiet.as_dict() if quiet else None,
                }
                for location_id, (rules, quiet) in sorted(self.locations.items())
            },
        }


def default_rules(settings: RemindersSettings) -> domain.RuleSet:
    quiet = domain.QuietHours.parse(settings.quiet_hours_start, settings.quiet_hours_end)
    return domain.RuleSet(domain.DEFAULT_RULES, quiet)


def parse_rules_document(data: dict[str, Any]) -> RulesDocument:
    """Validate a rules document; :class:`domain.InvalidRules` names the field at fault."""

    def rules_of(items: Sequence[dict[str, Any]], where: str) -> tuple[domain.Rule, ...]:
        rules = tuple(_rule_from(item) for item in items)
        for i, rule in enumerate(rules):
            domain.validate_rule(rule, f"{where}[{i}]")
        domain.check_unique(rules, where)
        return rules

    def quiet_of(raw: dict[str, str] | None, where: str) -> domain.QuietHours | None:
        if raw is None:
            return None
        try:
            return domain.QuietHours.parse(raw["start"], raw["end"])
        except domain.InvalidRules as exc:
            raise domain.InvalidRules(f"{where}.{exc}") from None

    defaults_raw = data["defaults"]
    defaults = domain.RuleSet(
        rules_of(defaults_raw["rules"], "defaults.rules"),
        quiet_of(defaults_raw["quiet_hours"], "defaults") or domain.QuietHours(),
    )
    locations = {
        location_id: (
            rules_of(entry.get("rules") or [], f"locations.{location_id}.rules"),
            quiet_of(entry.get("quiet_hours"), f"locations.{location_id}"),
        )
        for location_id, entry in data.get("locations", {}).items()
    }
    return RulesDocument(defaults, locations)


async def load_rules(session: AsyncSession, settings: RemindersSettings) -> RulesDocument:
    """The stored rules; the built-in defaults (with the settings' quiet hours) until a PUT."""
    rows = (await session.scalars(select(db.RuleSetRow))).all()
    stored = {row.scope: row.document for row in rows}
    defaults = stored.pop(DEFAULT_SCOPE, None)
    if defaults is None:
        if not stored:
            return RulesDocument(default_rules(settings), {})
        defaults = RulesDocument(default_rules(settings), {}).as_dict()["defaults"]
    return parse_rules_document({"defaults": defaults, "locations": stored})


async def store_rules(session: AsyncSession, document: RulesDocument, now: datetime) -> None:
    """Replace every stored scope with ``document``'s."""
    as_dict = document.as_dict()
    await session.execute(delete(db.RuleSetRow))
    session.add(db.RuleSetRow(scope=DEFAULT_SCOPE, document=as_dict["defaults"], updated_at=now))
    for location_id, entry in as_dict["locations"].items():
        session.add(db.RuleSetRow(scope=location_id, document=entry, updated_at=now))


class RulesCache:
    """The rules, read at most once a second: a burst of jobs does not parse them each."""

    def __init__(self, settings: RemindersSettings) -> None:
        self._settings = settings
        self._cached: tuple[float, RulesDocument] | None = None

    async def current(self, session: AsyncSession) -> RulesDocument:
        loop_time = asyncio.get_running_loop().time()
        if self._cached is not None and self._cached[0] > loop_time:
            return self._cached[1]
        document = await load_rules(session, self._settings)
        self._cached = (loop_time + RULES_CACHE_SECONDS, document)
        return document

    def clear(self) -> None:
        self._cached = None
