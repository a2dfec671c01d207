"""FHIR R4 views of a referral (ServiceRequest, Task), of its patient and of the patient's
check-in pain scores (Observation), for the clinic and for the partner it was sent to."""

# No ``from __future__ import annotations``: FastAPI reads the routes' local ``Annotated``
# dependencies at run time.

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from services.referrals import fhir, observations, outcomes, queries
from services.referrals.usecases import Referrals
from shared.auth import Principal


def build_fhir_router(app: Referrals, authenticate: Any) -> APIRouter:
    router = APIRouter(prefix="/fhir/R4", tags=["FHIR R4"])
    Caller = Annotated[Principal, Depends(authenticate)]

    def fhir_json(resource: dict[str, Any]) -> Response:
        return Response(fhir.to_bytes(resource), media_type=fhir.FHIR_JSON)

    @router.get("/ServiceRequest/{referral_id}")
    async def service_request(referral_id: str, caller: Caller) -> Response:
        record = await queries.viewable_referral(app, referral_id, caller)
        return fhir_json(fhir.service_request(record.snapshot(), app.clinic_name))

    @router.get("/Task/{referral_id}")
    async def task(referral_id: str, caller: Caller) -> Response:
        record = await queries.viewable_referral(app, referral_id, caller)
        return fhir_json(fhir.task(record.snapshot(), app.clinic_name, app.base_url))

    @router.get("/Patient/{client_id}")
    async def patient(client_id: str, caller: Caller) -> Response:
        """The minimal Patient the Bundles point at: name, date of birth, phone."""
        row = await queries.viewable_client(app, client_id, caller)
        return fhir_json(
            fhir.patient(
                fhir.PatientDetails(
                    id=row.id,
                    first_name=row.first_name,
                    last_name=row.last_name,
                    date_of_birth=row.date_of_birth,
                    phone=row.phone,
                )
            )
        )

    @router.get("/Observation")
    async def observation_search(
        caller: Caller,
        patient: Annotated[
            str,
            Query(
                min_length=1,
                max_length=80,
                description="the client's id, or a reference `Patient/<id>`",
            ),
        ],
    ) -> Response:
        """The patient's check-in pain scores (LOINC 72514-3, valueInteger 0-10), oldest
        first, as a searchset Bundle; only those the caller may see (else none)."""
        client_id = patient.removeprefix("Patient/")
        scores = await outcomes.pain_scores_of(app, client_id, caller)
        fhir_base = f"{app.base_url}/fhir/R4"
        self_url = f"{fhir_base}/Observation?{urlencode({'patient': patient})}"
        return fhir_json(observations.searchset(scores, fhir_base=fhir_base, self_url=self_url))

    @router.get("/Observation/{observation_id}")
    async def observation(observation_id: str, caller: Caller) -> Response:
        """One pain score (the ``fullUrl`` of the Bundles' entries)."""
        score = await outcomes.pain_score_by_id(app, observation_id, caller)
        return fhir_json(observations.observation(score))

    return router
