"""Referrals' HTTP routes: parse, authorize, call a use case or a query, shape the answer.

``clinic`` (the clinic's API), ``partner`` (the partner API), ``fhir_views`` (FHIR R4);
``shapes`` turns rows into the response models. Domain failures become HTTP statuses in
one place, ``shared.errors.install_error_handlers``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from services.referrals.api.clinic import build_clinic_router
from services.referrals.api.fhir_views import build_fhir_router
from services.referrals.api.partner import build_partner_router
from services.referrals.usecases import Referrals
from shared.errors import install_error_handlers
from shared.phones import InvalidPhone


def install_routes(app: FastAPI, referrals: Referrals, authenticate: Any) -> None:
    """Every route of the service, and the one mapping of its errors to statuses."""
    install_error_handlers(app, others={InvalidPhone: 422})
    app.include_router(build_clinic_router(referrals, authenticate))
    app.include_router(build_partner_router(referrals, authenticate))
    app.include_router(build_fhir_router(referrals, authenticate))
