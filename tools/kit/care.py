"""Bodies of referrals' HTTP API: partners, care plans, referrals, with defaults.

Tests, the referrals benchmark and the demo seed post these; each overrides what its story
needs (a webhook, the plan's components, the partner a component goes to).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any


def partner_body(
    name: str | None = None,
    *,
    discipline: str = "physical_therapy",
    phone: str = "(212) 555-0142",
    email: str = "referrals@partner.example",
    webhook_url: str | None = None,
) -> dict[str, Any]:
    """``POST /v1/partners``; a partner without a webhook uses the partner API instead."""
    body: dict[str, Any] = {
        "name": name or f"Partner {uuid.uuid4().hex[:6]}",
        "discipline": discipline,
        "phone": phone,
        "email": email,
    }
    if webhook_url:
        body["webhook_url"] = webhook_url
    return body


def component(discipline: str, sessions: int, per_week: int, **extra: Any) -> dict[str, Any]:
    """One therapy of a plan (``partner_id``, when given, names who provides it)."""
    return {"discipline": discipline, "sessions": sessions, "per_week": per_week, **extra}


#: Massage with physical therapy and acupuncture: the plan most stories start from.
DEFAULT_COMPONENTS = (
    component("massage", 2, 1),
    component("physical_therapy", 6, 2),
    component("acupuncture", 4, 1),
)


def plan_body(
    client_id: str,
    *,
    goals: str = "Walk without back pain",
    baseline_pain_score: int = 7,
    components: Sequence[dict[str, Any]] = DEFAULT_COMPONENTS,
) -> dict[str, Any]:
    """``POST /v1/plans`` for a client referrals knows (from booking's client events)."""
    return {
        "client_id": client_id,
        "goals": goals,
        "baseline_pain_score": baseline_pain_score,
        "components": [dict(c) for c in components],
    }


def referral_body(plan_id: str, partner_id: str, **extra: Any) -> dict[str, Any]:
    """``POST /v1/referrals``: one plan's therapy sent to one partner, with consent."""
    return {
        "plan_id": plan_id,
        "partner_id": partner_id,
        "reason": "Chronic low back pain, guarded movement; strengthening and mobility",
        "diagnosis_codes": ["M54.50", "M62.830"],
        "urgency": "routine",
        "consent_to_share": True,
        **extra,
    }
