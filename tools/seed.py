"""The demo `make run` seeds once, as a client of the services' public APIs (tools.kit).

Booking: Riverside (America/New_York, two rooms) and Lakeside (America/Chicago, one room),
four treatments, four therapists of whom two split their week between both, three clients,
James on the waitlist for a 90-minute massage at Riverside, and one upcoming visit for James (not Maria: the e2e tests text Maria and reply C) whose
``manage_url`` the launcher prints, so the client's page can be opened at once.
Referrals: a physical-therapy clinic, an acupuncturist, and a care plan for one of
booking's demo clients combining massage with both. Each seed does nothing when its
service already has data (a location; a partner).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tools.kit import Call, ClinicBuilder, Hours, bearer, run_sync
from tools.kit.calls import Steps
from tools.kit.care import component, partner_body, plan_body

WEEKDAYS = range(5)  # Monday to Friday


def demo_clinic() -> ClinicBuilder:
    clinic = ClinicBuilder()
    riverside = clinic.location(
        "Riverside Clinic",
        rooms=["Room A", "Room B"],
        timezone="America/New_York",
        address="120 River St, Columbus, GA 31901",
        phone="+17065550100",
    )
    lakeside = clinic.location(
        "Lakeside Clinic",
        rooms=["Room 1"],
        timezone="America/Chicago",
        address="45 Lake Ave, Phenix City, AL 36867",
        phone="+13345550100",
    )
    clinic.treatment("Medical massage 60", modality="medical_massage", duration_minutes=60)
    clinic.treatment("Medical massage 90", modality="medical_massage", duration_minutes=90)
    clinic.treatment("Lymphatic drainage 60", modality="lymphatic_drainage", duration_minutes=60)
    clinic.treatment(
        "Myofascial release 45",
        modality="myofascial_release",
        duration_minutes=45,
        buffer_minutes=10,
    )
    # Two therapists split their week between the two locations.
    clinic.therapist(
        "Ana Silva",
        modalities=["medical_massage", "myofascial_release"],
        hours=[
            Hours(riverside, [0, 2, 4], "09:00", "17:00"),
            Hours(lakeside, [1, 3], "10:00", "18:00"),
        ],
    )
    clinic.therapist(
        "Ben Okafor",
        modalities=["medical_massage", "lymphatic_drainage"],
        hours=[
            Hours(lakeside, [0, 2, 4], "09:00", "17:00"),
            Hours(riverside, [1, 3], "12:00", "20:00"),
        ],
    )
    clinic.therapist(
        "Chloe Martin",
        modalities=["medical_massage", "lymphatic_drainage", "myofascial_release"],
        hours=[Hours(riverside, WEEKDAYS, "08:00", "16:00")],
    )
    clinic.therapist(
        "Dev Patel",
        modalities=["medical_massage"],
        hours=[Hours(lakeside, WEEKDAYS, "11:00", "19:00")],
    )
    clinic.client("Maria", "Lopez", phone="+12125550101", sms_consent=True)
    clinic.client("James", "Carter", phone="+12125550102", sms_consent=True)
    clinic.client("Aiko", "Tanaka", phone="+12125550103", sms_consent=False)
    return clinic


def _demo_clinic_steps() -> Steps[dict[str, Any]]:
    if (yield Call("GET", "/v1/locations")):
        return {"seeded": False}
    made = yield from demo_clinic().steps()
    entry = yield Call("POST", "/v1/waitlist", waitlist_body(made), expect=(201,))
    return {
        "seeded": True,
        "locations": made.locations,
        "services": made.treatments,
        "therapists": made.therapists,
        "clients": made.clients,
        "waitlist": [entry],
    }


def waitlist_body(made: Any) -> dict[str, Any]:
    """James waits for a 90-minute medical massage at Riverside, afternoons, the next two
    weeks: a cancel there offers him the slot by text."""
    today = datetime.now(UTC).date()
    return {
        "client_id": made.clients[1]["id"],
        "service_id": made.treatments[1]["id"],
        "location_id": made.locations[0]["id"],
        "earliest": today.isoformat(),
        "latest": (today + timedelta(days=14)).isoformat(),
        "times_of_day": ["afternoon"],
    }


def seed_demo(booking_url: str, admin_key: str) -> dict[str, Any]:
    """Create the demo clinic unless a location exists already; returns what it made."""
    with httpx.Client(base_url=booking_url, headers=bearer(admin_key), timeout=10) as client:
        return run_sync(client, _demo_clinic_steps())


#: Whose visit the demo books: a client the e2e tests never text.
DEMO_VISIT_CLIENT = "James"
DEMO_VISIT_LOCATION = "Riverside Clinic"
DEMO_VISIT_TREATMENT = "Medical massage 60"
UPCOMING = ("booked", "confirmed")


def _demo_visit_steps(now: datetime) -> Steps[dict[str, Any] | None]:
    clients = yield Call("GET", "/v1/clients")
    client = next((c for c in clients if c["first_name"] == DEMO_VISIT_CLIENT), None)
    if client is None:
        return None
    sessions = yield Call(
        "GET", "/v1/sessions", params={"client_id": client["id"], "start": now.isoformat()}
    )
    upcoming = [s for s in sessions if s["status"] in UPCOMING]
    if upcoming:
        return dict(min(upcoming, key=lambda s: str(s["start"])))
    locations = yield Call("GET", "/v1/locations")
    services = yield Call("GET", "/v1/services")
    location = next((x for x in locations if x["name"] == DEMO_VISIT_LOCATION), None)
    service = next((x for x in services if x["name"] == DEMO_VISIT_TREATMENT), None)
    if location is None or service is None:
        return None
    start = now + timedelta(days=1)
    slots = yield Call(
        "GET",
        "/v1/availability",
        params={
            "service_id": service["id"],
            "location_id": location["id"],
            "start": start.isoformat(),
            "end": (start + timedelta(days=7)).isoformat(),
        },
    )
    if not slots:
        return None
    body = {
        "client_id": client["id"],
        "service_id": service["id"],
        "location_id": location["id"],
        "start": slots[0]["start"],
    }
    booked: dict[str, Any] = yield Call("POST", "/v1/sessions", body, expect=(201,))
    return booked


def demo_visit(booking_url: str, admin_key: str) -> dict[str, Any] | None:
    """James's next visit (booked now if he has none): the session JSON, with its
    ``manage_url``. None when the demo clinic is not there (another clinic's data)."""
    with httpx.Client(base_url=booking_url, headers=bearer(admin_key), timeout=10) as client:
        return run_sync(client, _demo_visit_steps(datetime.now(UTC)))


PT_CLINIC = partner_body(
    "Riverside Physical Therapy",
    discipline="physical_therapy",
    phone="+17065550142",
    email="referrals@riverside-pt.example",
)
ACUPUNCTURIST = partner_body(
    "Lakeside Acupuncture",
    discipline="acupuncture",
    phone="+13345550177",
    email="frontdesk@lakeside-acupuncture.example",
)


def _demo_partners_steps(client: dict[str, Any] | None) -> Steps[dict[str, Any]]:
    if (yield Call("GET", "/v1/partners")):
        return {"seeded": False}
    pt = yield Call("POST", "/v1/partners", PT_CLINIC, expect=(201,))
    acu = yield Call("POST", "/v1/partners", ACUPUNCTURIST, expect=(201,))
    result: dict[str, Any] = {"seeded": True, "partners": [pt, acu], "plan": None}
    if client is not None:
        plan = plan_body(
            client["id"],
            goals="Reduce low back pain and return to gardening without flare-ups",
            baseline_pain_score=7,
            components=[
                component("massage", 8, 1),
                component("physical_therapy", 6, 2, partner_id=pt["id"]),
                component("acupuncture", 4, 1, partner_id=acu["id"]),
            ],
        )
        if client.get("home_location_id"):
            # Run from the client's home location: its front desk sees the plan and its trend.
            plan["location_id"] = client["home_location_id"]
        result["plan"] = yield Call("POST", "/v1/plans", plan, expect=(201,))
    return result


def seed_referrals(
    referrals_url: str, admin_key: str, client: dict[str, Any] | None
) -> dict[str, Any]:
    """Create a PT clinic, an acupuncturist and (for ``client``, a booking client's JSON with
    its ``id``) a care plan combining massage with both, with a baseline pain score of 7 (the
    check-in scores' trend is shown against it). Idempotent: if any partner exists,
    nothing is created and ``{"seeded": False}`` is returned.

    The partners have no webhook: they use the partner API with the ``api_key`` returned
    here (shown only this once).
    """
    with httpx.Client(base_url=referrals_url, headers=bearer(admin_key), timeout=10) as http:
        return run_sync(http, _demo_partners_steps(client))
