"""The functions APScheduler jobs point at (``services.reminders.jobs:…``).

A job stores only ids; the function finds the running service here, bound when this
instance becomes the active scheduler, and re-reads everything it needs.
"""

from __future__ import annotations

import structlog

from services.reminders import delivery, usecases

log = structlog.get_logger(__name__)

_active: usecases.Reminders | None = None


def bind(app: usecases.Reminders | None) -> None:
    global _active
    _active = app


async def send_session_message(session_id: str, rule: str) -> None:
    if _active is None:
        log.warning("job.unbound", session=session_id, rule=rule)
        return
    async with _active.job_slots:
        await delivery.send_session_message(_active, session_id, rule)


async def send_referral_update(notice_id: str) -> None:
    if _active is None:
        log.warning("job.unbound", notice=notice_id)
        return
    async with _active.job_slots:
        await delivery.send_referral_update(_active, notice_id)
