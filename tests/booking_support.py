"""Helpers of the booking tests: a small clinic made through the API with the kit."""

from __future__ import annotations

from typing import Any

import httpx

from tools.kit import ClinicBuilder


async def make_clinic(
    client: httpx.AsyncClient, rooms: int = 1, therapists: int = 1
) -> dict[str, Any]:
    """Downtown (America/New_York) with ``rooms`` rooms, a 60-minute medical massage,
    ``therapists`` therapists working 09:00-17:00 every day, and Maria, who agreed to texts."""
    builder = ClinicBuilder()
    builder.location("Downtown", rooms=[f"Room {i}" for i in range(rooms)])
    builder.treatment("Medical massage 60")
    for i in range(therapists):
        builder.therapist(f"Therapist {i}")
    builder.client("Maria", "Lopez", phone="(212) 555-0199", sms_consent=True)
    clinic = await builder.create(client)
    return {
        "location": clinic.location,
        "rooms": clinic.rooms,
        "service": clinic.treatment,
        "therapists": clinic.therapists,
        "client": clinic.client,
    }
