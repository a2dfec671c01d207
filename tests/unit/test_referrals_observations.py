"""Check-in pain scores: the trend beside the baseline, and the FHIR R4 Observations they
become (alone, in a search Bundle, in the partner's webhook Bundle), validated by
fhir.resources.R4B."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation

from services.referrals import fhir, observations
from services.referrals.domain import outcome_summary
from services.referrals.observations import PainScore
from tests.unit.test_referrals_fhir import BASE, snapshot

AT = datetime(2026, 3, 9, 17, 5, tzinfo=UTC)
CLIENT = "c1a2b3c4-0000-4000-8000-000000000001"


def score(value: int, days: int = 0, session: str = "s1") -> PainScore:
    return PainScore(
        id=f"0b6f6c1e-0000-4000-8000-00000000000{days}",
        client_id=CLIENT,
        session_id=session,
        score=value,
        answered_at=AT + timedelta(days=days),
        recorded_at=AT + timedelta(days=days, seconds=2),
    )


def test_the_trend_is_the_latest_score_against_the_baseline() -> None:
    trend = outcome_summary(7, [6, 5, 3])
    assert (trend.baseline_pain_score, trend.latest, trend.change_from_baseline) == (7, 3, -4)
    assert trend.count == 3
    assert outcome_summary(7, []).latest is None
    assert outcome_summary(7, []).change_from_baseline is None
    assert outcome_summary(None, [4]).change_from_baseline is None


def test_a_pain_score_is_an_r4_observation_with_loinc_72514_3() -> None:
    resource = observations.observation(score(7))
    obs = Observation.model_validate(resource)
    assert obs.status == "final"
    assert obs.code.coding[0].system == "http://loinc.org"
    assert obs.code.coding[0].code == "72514-3"
    assert obs.category[0].coding[0].code == "survey"
    assert obs.subject.reference == f"Patient/{CLIENT}"
    assert obs.valueInteger == 7
    assert resource["effectiveDateTime"] == AT.isoformat()


def test_the_search_answers_a_searchset_bundle_oldest_first() -> None:
    found = observations.searchset(
        [score(6, 0, "s1"), score(4, 1, "s2")],
        fhir_base=f"{BASE}/fhir/R4",
        self_url=f"{BASE}/fhir/R4/Observation?patient={CLIENT}",
    )
    bundle = Bundle.model_validate(found)
    assert bundle.type == "searchset" and bundle.total == 2
    values = [e.resource.valueInteger for e in bundle.entry or []]
    assert values == [6, 4]
    assert all(e.search.mode == "match" for e in bundle.entry or [])
    empty = observations.searchset([], fhir_base=BASE, self_url=BASE)
    assert Bundle.model_validate(empty).total == 0


def test_the_partner_bundle_carries_the_plans_observations() -> None:
    plan = snapshot().plan
    with_scores = fhir.PlanSummary(
        plan.id, plan.goals, plan.baseline_pain_score, plan.components, (score(6), score(4, 1))
    )
    resource = fhir.bundle(
        snapshot(plan=with_scores),
        bundle_id="d1",
        timestamp=AT,
        clinic_name="Clinic",
        base_url=BASE,
    )
    bundle = Bundle.model_validate(resource)
    kinds = [e.resource.get_resource_type() for e in bundle.entry or []]
    assert kinds == ["ServiceRequest", "Task", "Patient", "Observation", "Observation"]
    entry = (bundle.entry or [])[3]
    assert entry.fullUrl == f"{BASE}/fhir/R4/Observation/{score(6).id}"
    assert entry.resource.subject.reference == f"Patient/{CLIENT}"
