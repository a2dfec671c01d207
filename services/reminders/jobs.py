"""The names stored jobs carry, and their ids.

A job in the store names a module-level function (``services.reminders.jobs:…``) and
carries ids only. The functions below are those names and nothing more: the leased
scheduler runs the handler the composition root registered for each name
(``firing.py``), so which database and which Twilio account a job acts on belongs to the
process, not to the job. They must stay importable for the jobs already stored.
"""

from __future__ import annotations

SESSION_JOB = "services.reminders.jobs:send_session_message"
REFERRAL_JOB = "services.reminders.jobs:send_referral_update"
WAITLIST_JOB = "services.reminders.jobs:send_waitlist_text"


def session_job_id(session_id: str, rule: str) -> str:
    """Deterministic: a replayed event or a re-plan replaces the job, never duplicates it."""
    return f"{session_id}:{rule}"


def referral_job_id(notice_id: str) -> str:
    """``<referral_id>:referral_<status>`` (notice ids are ``<referral_id>:<status>``)."""
    referral_id, status = notice_id.rsplit(":", 1)
    return f"{referral_id}:referral_{status}"


async def send_session_message(session_id: str, rule: str) -> None:
    """Stored name of a session's message job (bound to ``firing.send_session_message``)."""
    raise RuntimeError("a job name only: the scheduler runs the bound handler")


async def send_referral_update(notice_id: str) -> None:
    """Stored name of a referral update job (bound to ``firing.send_referral_update``)."""
    raise RuntimeError("a job name only: the scheduler runs the bound handler")


async def send_waitlist_text(offer_id: str, what: str) -> None:
    """Stored name of a waitlist text's job (bound to ``waitlist.send_waitlist_text``)."""
    raise RuntimeError("a job name only: the scheduler runs the bound handler")
