"""Check-in pain scores as FHIR R4 Observations, for ``GET /fhir/R4/Observation?patient=…``
and for the partner webhook Bundle.

The score is the client's own answer to "0 to 10, how do you feel": LOINC 72514-3 "Pain
severity - 0-10 verbal numeric rating [Score] - Reported", category ``survey`` (an answer to
an assessment question). Not ``vital-signs``: that category promises FHIR's vital-signs
profile, whose codes do not include pain. Validated through ``fhir.resources.R4B``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# fhir.resources (~9 MB) is imported where a resource is validated: an idle referrals
# service, which has sent nothing yet, does not hold it.

LOINC = "http://loinc.org"
PAIN_SCORE_CODE = "72514-3"
PAIN_SCORE_DISPLAY = "Pain severity - 0-10 verbal numeric rating [Score] - Reported"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
#: Which booking session the check-in followed (our identifier namespace).
CHECKIN_IDENTIFIER = "https://clinic-backbone.example/fhir/identifier/check-in-session"


@dataclass(frozen=True)
class PainScore:
    """One recorded check-in answer, as the FHIR views show it."""

    id: str
    client_id: str
    session_id: str
    score: int
    answered_at: datetime
    recorded_at: datetime


def observation_json(score: PainScore) -> dict[str, Any]:
    """The Observation as plain JSON (not yet validated: Bundles validate it whole)."""
    patient = f"Patient/{score.client_id}"
    return {
        "resourceType": "Observation",
        "id": score.id,
        "identifier": [{"system": CHECKIN_IDENTIFIER, "value": score.session_id}],
        "status": "final",
        "category": [
            {"coding": [{"system": CATEGORY_SYSTEM, "code": "survey", "display": "Survey"}]}
        ],
        "code": {
            "coding": [{"system": LOINC, "code": PAIN_SCORE_CODE, "display": PAIN_SCORE_DISPLAY}],
            "text": "Pain 0-10, reported by the client after a session",
        },
        "subject": {"reference": patient},
        "effectiveDateTime": score.answered_at.isoformat(),
        "issued": score.recorded_at.isoformat(),
        "performer": [{"reference": patient}],
        "valueInteger": score.score,
    }


def observation(score: PainScore) -> dict[str, Any]:
    """One pain score as a FHIR R4 Observation, validated."""
    resource = observation_json(score)
    from fhir.resources.R4B.observation import Observation

    Observation.model_validate(resource)
    return resource


def searchset(scores: Sequence[PainScore], *, fhir_base: str, self_url: str) -> dict[str, Any]:
    """The answer to an Observation search: a ``searchset`` Bundle, oldest score first."""
    resource: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(scores),
        "link": [{"relation": "self", "url": self_url}],
        "entry": [
            {
                "fullUrl": f"{fhir_base}/Observation/{s.id}",
                "resource": observation_json(s),
                "search": {"mode": "match"},
            }
            for s in scores
        ],
    }
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(resource)
    return resource
