"""ICD-10-CM diagnosis codes: format, then the table shipped in ``data/`` (see its README).

A code is refused when it is malformed, when CMS deleted it (the message names the codes
that replace it), when it is a category rather than a billable code, or when it is not in
the table at all.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
ICD10_CM_SYSTEM = "http://hl7.org/fhir/sid/icd-10-cm"

#: Letter, digit, letter-or-digit, then optionally a dot and one to four more.
CODE_FORMAT = re.compile(r"^[A-Z][0-9][0-9A-Z](?:\.[0-9A-Z]{1,4})?$")


class InvalidDiagnosisCode(ValueError):
    """A diagnosis code the service will not send to a partner (HTTP 422)."""


@dataclass(frozen=True)
class DiagnosisCode:
    code: str
    description: str


@dataclass(frozen=True)
class DeletedCode:
    code: str
    deleted_on: date
    replaced_by: tuple[str, ...]


def normalize(raw: str) -> str:
    """``m5450`` → ``M54.50``: upper case, and the dot after the category if it was left out."""
    code = raw.strip().upper()
    if "." not in code and len(code) > 3:
        code = f"{code[:3]}.{code[3:]}"
    return code


class CodeTable:
    """The codes a referral may carry, and the deleted codes with their replacements."""

    def __init__(self, codes: dict[str, str], deleted: dict[str, DeletedCode]) -> None:
        self._codes = codes
        self._deleted = deleted

    @classmethod
    def load(cls, directory: Path = DATA) -> CodeTable:
        with (directory / "icd10cm_codes.csv").open(newline="") as f:
            codes = {row["code"]: row["description"] for row in csv.DictReader(f)}
        with (directory / "icd10cm_deleted.csv").open(newline="") as f:
            deleted = {
                row["code"]: DeletedCode(
                    row["code"],
                    date.fromisoformat(row["deleted_on"]),
                    tuple(row["replaced_by"].split()),
                )
                for row in csv.DictReader(f)
            }
        return cls(codes, deleted)

    def __contains__(self, code: str) -> bool:
        return code in self._codes

    def describe(self, code: str) -> str:
        return self._codes.get(code, "")

    def _with_descriptions(self, codes: tuple[str, ...] | list[str]) -> str:
        named = [f"{c} ({self._codes[c]})" if c in self._codes else c for c in codes]
        return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " or " + named[-1]

    def check(self, raw: str) -> DiagnosisCode:
        """The table entry for ``raw``, or :class:`InvalidDiagnosisCode` saying what to use."""
        code = normalize(raw)
        if not CODE_FORMAT.match(code):
            raise InvalidDiagnosisCode(
                f"{raw!r} is not an ICD-10-CM code: expected a letter, a digit, a letter or "
                "digit, then optionally a dot and up to four more (e.g. M54.50)"
            )
        gone = self._deleted.get(code)
        if gone is not None:
            raise InvalidDiagnosisCode(
                f"{code} was deleted from ICD-10-CM on {gone.deleted_on.isoformat()}; "
                f"use {self._with_descriptions(gone.replaced_by)}"
            )
        if code in self._codes:
            return DiagnosisCode(code, self._codes[code])
        children = sorted(c for c in self._codes if c.startswith(code) and c != code)
        if children:
            raise InvalidDiagnosisCode(
                f"{code} is a category, not a billable code; use a more specific code such as "
                f"{', '.join(children[:6])}"
            )
        raise InvalidDiagnosisCode(
            f"{code} is not in this service's ICD-10-CM table "
            "(codes for massage, physical therapy, acupuncture and chiropractic referrals)"
        )

    def check_all(self, raws: list[str]) -> list[DiagnosisCode]:
        """Every code checked, duplicates dropped, order kept; all problems in one message."""
        found: list[DiagnosisCode] = []
        problems: list[str] = []
        for raw in raws:
            try:
                entry = self.check(raw)
            except InvalidDiagnosisCode as exc:
                problems.append(str(exc))
                continue
            if entry not in found:
                found.append(entry)
        if problems:
            raise InvalidDiagnosisCode("; ".join(problems))
        if not found:
            raise InvalidDiagnosisCode("at least one diagnosis code is required")
        return found


@lru_cache(maxsize=1)
def default_table() -> CodeTable:
    """The table shipped with the service, read once."""
    return CodeTable.load()
