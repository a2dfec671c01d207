"""Faults on demand: which creates fail, answer slowly, or fail later on the network.

Rules come from two places: the settings (fixed for the process, e.g. the magic
numbers) and ``POST /_sandbox/faults`` (set by a test at run time, optionally for a
limited number of uses, e.g. "429 once, then succeed"). Run-time rules are consulted
first, oldest first, so a test can override a built-in behaviour for a number.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from fnmatch import fnmatchcase

from pydantic import BaseModel, Field, model_validator

from .errors import CATALOG, DEFAULT_CODE_FOR_STATUS
from .settings import SandboxSettings


class FaultRule(BaseModel):
    """One fault. ``to`` is a shell-style glob; ``times`` = None means until reset."""

    to: str = "*"
    http_status: int | None = Field(default=None, ge=400, le=599)
    code: int | None = None
    message: str | None = None
    times: int | None = Field(default=None, ge=1)
    delay_ms: int = Field(default=0, ge=0, le=120_000)
    delivery_error: int | None = Field(default=None, ge=30000, le=30999)
    id: int = 0
    source: str = "runtime"

    @model_validator(mode="after")
    def _complete(self) -> FaultRule:
        if self.code is not None and self.http_status is None:
            self.http_status = CATALOG.get(self.code, (400, ""))[0]
        if self.http_status is not None and self.code is None:
            self.code = DEFAULT_CODE_FOR_STATUS.get(self.http_status, 20001)
        if self.http_status is None and not self.delay_ms and self.delivery_error is None:
            raise ValueError("a fault needs http_status/code, delay_ms or delivery_error")
        return self

    @property
    def rejects(self) -> bool:
        return self.http_status is not None

    def matches(self, to: str) -> bool:
        return fnmatchcase(to, self.to)


@dataclass
class FaultPlan:
    """What to do with one create request."""

    delay_ms: int = 0
    reject: FaultRule | None = None
    delivery_error: int | None = None


def rules_from_settings(settings: SandboxSettings) -> list[FaultRule]:
    rules: list[FaultRule] = []
    for pattern, code in settings.reject_to.items():
        rules.append(FaultRule(to=pattern, code=code, source="settings"))
    for pattern in settings.rate_limited_to:
        rules.append(FaultRule(to=pattern, http_status=429, code=20429, source="settings"))
    for pattern in settings.server_error_to:
        rules.append(FaultRule(to=pattern, http_status=500, code=20500, source="settings"))
    if settings.slow_ms:
        for pattern in settings.slow_to:
            rules.append(FaultRule(to=pattern, delay_ms=settings.slow_ms, source="settings"))
    for pattern, code in settings.delivery_failures.items():
        rules.append(FaultRule(to=pattern, delivery_error=code, source="settings"))
    return rules


class FaultBook:
    """Holds the rules and decides, per create, which of them apply."""

    def __init__(self, settings: SandboxSettings) -> None:
        self._ids = itertools.count(1)
        self.fixed = rules_from_settings(settings)
        for rule in self.fixed:
            rule.id = next(self._ids)
        self.runtime: list[FaultRule] = []

    def add(self, rule: FaultRule) -> FaultRule:
        rule = rule.model_copy(update={"id": next(self._ids), "source": "runtime"})
        self.runtime.append(rule)
        return rule

    def clear(self) -> None:
        self.runtime.clear()

    def all(self) -> list[FaultRule]:
        return [*self.runtime, *self.fixed]

    def plan(self, to: str) -> FaultPlan:
        """Pick the first matching rule of each kind and use up one of its ``times``.

        A delivery failure is only taken when the create is not rejected, so a
        limited rule is not spent on a message that never reaches the network.
        """
        plan = FaultPlan()
        used: list[FaultRule] = []
        matching = [rule for rule in self.all() if rule.matches(to)]
        for rule in matching:
            took = False
            if rule.rejects and plan.reject is None:
                plan.reject, took = rule, True
            if rule.delay_ms and not plan.delay_ms:
                plan.delay_ms, took = rule.delay_ms, True
            if took:
                used.append(rule)
        if plan.reject is None:
            for rule in matching:
                if rule.delivery_error is not None:
                    plan.delivery_error = rule.delivery_error
                    if rule not in used:
                        used.append(rule)
                    break
        for rule in used:
            self._spend(rule)
        return plan

    def _spend(self, rule: FaultRule) -> None:
        if rule.times is None:
            return
        rule.times -= 1
        if rule.times <= 0 and rule in self.runtime:
            self.runtime.remove(rule)
