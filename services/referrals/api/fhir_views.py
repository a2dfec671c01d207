"""FHIR R4 views of a referral (ServiceRequest, Task) and of its patient, for the clinic
and for the partner it was sent to."""

# No ``from __future__ import annotations``: FastAPI reads the routes' local ``Annotated``
# dependencies at run time.

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from services.referrals import fhir, queries
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

    return router
