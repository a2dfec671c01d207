"""The webhook Bundle is validated with fhir.resources once per shape: a second Bundle of
the same shape is accepted without it, and whatever fhir.resources would refuse is still
refused, however many valid Bundles came before."""

from __future__ import annotations

import copy
import dataclasses
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from services.referrals import fhir
from services.referrals.fhir_check import ShapeValidator
from tests.unit.test_referrals_fhir import AT, BASE, snapshot


def counting() -> tuple[ShapeValidator, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def validate(resource: dict[str, Any]) -> None:
        seen.append(resource)
        Bundle.model_validate(resource)

    return ShapeValidator(validate), seen


def bundle_of(snap: fhir.ReferralSnapshot, at: datetime = AT) -> dict[str, Any]:
    return fhir.bundle(
        snap, bundle_id=str(uuid.uuid4()), timestamp=at, clinic_name="Clinic", base_url=BASE
    )


def referral(n: int) -> fhir.ReferralSnapshot:
    client = str(uuid.uuid4())
    at = AT + timedelta(seconds=n, microseconds=n * 7919)
    snap = snapshot(id=str(uuid.uuid4()), client_id=client, created_at=at, updated_at=at)
    assert snap.patient is not None
    return dataclasses.replace(
        snap, patient=dataclasses.replace(snap.patient, id=client, first_name=f"Client{n:03d}")
    )


def test_referrals_of_one_shape_are_validated_once() -> None:
    validator, seen = counting()
    for n in range(200):
        validator.check(bundle_of(referral(n), AT + timedelta(minutes=n)))
    assert len(seen) == 1


def test_an_optional_part_is_a_new_shape_and_validated() -> None:
    validator, seen = counting()
    validator.check(bundle_of(referral(1)))
    validator.check(bundle_of(dataclasses.replace(referral(2), first_visit_at=AT)))
    assert len(seen) == 2


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(resource: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node: Any = resource
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value

    return change


@pytest.mark.parametrize(
    "change",
    [
        _set("entry/0/resource/id", "not an id"),
        _set("entry/1/resource/authoredOn", "2026-03-08T15:30:00"),  # no time zone
        _set("entry/1/resource/priority", "very  urgent"),  # not a code
        _set("entry/2/resource/birthDate", "1980-02-30"),
        _set("entry/2/resource/telecom/0/value", ""),
        _set("timestamp", "2026-03-08"),
    ],
)
def test_what_fhir_refuses_is_refused_after_valid_bundles(
    change: Callable[[dict[str, Any]], None],
) -> None:
    validator, _ = counting()
    for n in range(5):
        validator.check(bundle_of(referral(n)))
    bad = copy.deepcopy(bundle_of(referral(9)))
    change(bad)
    with pytest.raises(ValidationError):
        Bundle.model_validate(bad)  # the reference: fhir.resources itself refuses it
    with pytest.raises(ValidationError):
        validator.check(bad)


def test_the_service_bundle_refuses_an_invalid_id_after_valid_ones() -> None:
    for n in range(3):
        bundle_of(referral(n))
    with pytest.raises(ValueError):
        bundle_of(dataclasses.replace(referral(4), id="bad id/with space"))


def test_a_refused_shape_is_not_remembered() -> None:
    validator, seen = counting()
    bad = bundle_of(referral(1))
    _set("entry/0/resource/id", "bad id")(bad)
    for _ in range(2):
        with pytest.raises(ValidationError):
            validator.check(bad)
    assert len(seen) == 2


def test_a_client_s_details_are_not_kept_for_the_process_s_life() -> None:
    validator, _ = counting()
    first = referral(0)
    assert first.patient is not None
    for n in range(400):
        validator.check(bundle_of(referral(n)))
    remembered = set(validator._strings) | set(validator._fresh)
    assert first.patient.first_name not in remembered
    assert f"{first.patient.first_name} {first.patient.last_name}" not in remembered
    assert "Clinic" in validator._strings  # what every Bundle repeats is remembered
