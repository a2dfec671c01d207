"""The demo partners and care plan `make run` seeds once, through the public API.

``seed_demo`` is called by the launcher after booking's seed, with one of booking's demo
clients; it does nothing when referrals already has partners.
"""

from __future__ import annotations

from typing import Any

import httpx

PT_CLINIC = {
    "name": "Riverside Physical Therapy",
    "discipline": "physical_therapy",
    "phone": "+17065550142",
    "email": "referrals@riverside-pt.example",
}
ACUPUNCTURIST = {
    "name": "Lakeside Acupuncture",
    "discipline": "acupuncture",
    "phone": "+13345550177",
    "email": "frontdesk@lakeside-acupuncture.example",
}


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    if response.status_code != 201:
        raise RuntimeError(f"POST {path} -> {response.status_code}: {response.text[:300]}")
    return dict(response.json())


def seed_demo(referrals_url: str, admin_key: str, client: dict[str, Any] | None) -> dict[str, Any]:
    """Create a PT clinic, an acupuncturist and (for ``client``, a booking client's JSON with
    its ``id``) a care plan combining massage with both. Idempotent: if any partner exists,
    nothing is created and ``{"seeded": False}`` is returned.

    The partners have no webhook: they use the partner API with the ``api_key`` returned
    here (shown only this once).
    """
    with httpx.Client(
        base_url=referrals_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10
    ) as http:
        existing = http.get("/v1/partners")
        existing.raise_for_status()
        if existing.json():
            return {"seeded": False}
        pt = _post(http, "/v1/partners", PT_CLINIC)
        acu = _post(http, "/v1/partners", ACUPUNCTURIST)
        result: dict[str, Any] = {"seeded": True, "partners": [pt, acu], "plan": None}
        if client is not None:
            result["plan"] = _post(
                http,
                "/v1/plans",
                {
                    "client_id": client["id"],
                    "goals": "Reduce low back pain and return to gardening without flare-ups",
                    "baseline_pain_score": 7,
                    "components": [
                        {"discipline": "massage", "sessions": 8, "per_week": 1},
                        {
                            "discipline": "physical_therapy",
                            "sessions": 6,
                            "per_week": 2,
                            "partner_id": pt["id"],
                        },
                        {
                            "discipline": "acupuncture",
                            "sessions": 4,
                            "per_week": 1,
                            "partner_id": acu["id"],
                        },
                    ],
                },
            )
        return result
