"""The demo clinic `make run` seeds once: two locations in two zones, rooms, therapists,
treatments and clients, created through the public API like any front desk would."""

from __future__ import annotations

from typing import Any

import httpx

WEEKDAYS = range(5)  # Monday to Friday


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    response.raise_for_status()
    return dict(response.json())


def seed_demo(booking_url: str, admin_key: str) -> dict[str, Any]:
    """Create the demo clinic unless a location exists already; returns what it made."""
    with httpx.Client(
        base_url=booking_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10
    ) as client:
        existing = client.get("/v1/locations")
        existing.raise_for_status()
        if existing.json():
            return {"seeded": False}

        riverside = _post(
            client,
            "/v1/locations",
            {
                "name": "Riverside Clinic",
                "timezone": "America/New_York",
                "address": "120 River St, Columbus, GA 31901",
                "phone": "+17065550100",
            },
        )
        lakeside = _post(
            client,
            "/v1/locations",
            {
                "name": "Lakeside Clinic",
                "timezone": "America/Chicago",
                "address": "45 Lake Ave, Phenix City, AL 36867",
                "phone": "+13345550100",
            },
        )
        for location, names in ((riverside, ["Room A", "Room B"]), (lakeside, ["Room 1"])):
            for name in names:
                _post(client, f"/v1/locations/{location['id']}/rooms", {"name": name})

        treatments = [
            {
                "name": "Medical massage 60",
                "modality": "medical_massage",
                "duration_minutes": 60,
                "buffer_minutes": 15,
            },
            {
                "name": "Medical massage 90",
                "modality": "medical_massage",
                "duration_minutes": 90,
                "buffer_minutes": 15,
            },
            {
                "name": "Lymphatic drainage 60",
                "modality": "lymphatic_drainage",
                "duration_minutes": 60,
                "buffer_minutes": 15,
            },
            {
                "name": "Myofascial release 45",
                "modality": "myofascial_release",
                "duration_minutes": 45,
                "buffer_minutes": 10,
            },
        ]
        services = [_post(client, "/v1/services", t) for t in treatments]

        def hours(
            location: dict[str, Any], days: range | list[int], start: str, end: str
        ) -> list[dict[str, Any]]:
            return [
                {"location_id": location["id"], "weekday": d, "start": start, "end": end}
                for d in days
            ]

        therapists = [
            # Two therapists split their week between the two locations.
            {
                "name": "Ana Silva",
                "modalities": ["medical_massage", "myofascial_release"],
                "working_hours": hours(riverside, [0, 2, 4], "09:00", "17:00")
                + hours(lakeside, [1, 3], "10:00", "18:00"),
            },
            {
                "name": "Ben Okafor",
                "modalities": ["medical_massage", "lymphatic_drainage"],
                "working_hours": hours(lakeside, [0, 2, 4], "09:00", "17:00")
                + hours(riverside, [1, 3], "12:00", "20:00"),
            },
            {
                "name": "Chloe Martin",
                "modalities": ["medical_massage", "lymphatic_drainage", "myofascial_release"],
                "working_hours": hours(riverside, WEEKDAYS, "08:00", "16:00"),
            },
            {
                "name": "Dev Patel",
                "modalities": ["medical_massage"],
                "working_hours": hours(lakeside, WEEKDAYS, "11:00", "19:00"),
            },
        ]
        made = [_post(client, "/v1/therapists", t) for t in therapists]

        clients = [
            {
                "first_name": "Maria",
                "last_name": "Lopez",
                "phone": "+12125550101",
                "sms_consent": True,
            },
            {
                "first_name": "James",
                "last_name": "Carter",
                "phone": "+12125550102",
                "sms_consent": True,
            },
            {
                "first_name": "Aiko",
                "last_name": "Tanaka",
                "phone": "+12125550103",
                "sms_consent": False,
            },
        ]
        people = [_post(client, "/v1/clients", c) for c in clients]
        return {
            "seeded": True,
            "locations": [riverside, lakeside],
            "services": services,
            "therapists": made,
            "clients": people,
        }
