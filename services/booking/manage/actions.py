"""What the page's buttons do: the API's own use cases (same events, same texts), with
the version the form was rendered for as the expected one, so a double submit or a stale
form changes nothing a second time. Failures become a sentence the client can act on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from services.booking import availability, db, domain
from services.booking.usecases import Booking, sessions
from shared.auth import EVERYTHING
from shared.errors import DomainError
from shared.timeutil import as_utc

#: How far ahead the page offers new times.
RESCHEDULE_DAYS = 14
#: What a client's cancel says in the session's ``reason`` (never shown to others).
CLIENT_CANCEL_REASON = "cancelled by the client on their page"


@dataclass
class Outcome:
    """What an action did: a redirect on success, or the page again with a message."""

    done: str | None = None
    message: str | None = None
    status: int = 200
    show_times: bool = False


#: Failures of a move the client can fix by picking another time.
TAKEN = (
    domain.SlotTaken,
    domain.NoRoomFree,
    domain.OutsideWorkingHours,
    domain.TherapistUnavailable,
)


async def act(
    booking: Booking, row: db.Session, action: str, form: dict[str, str], version: int
) -> Outcome:
    try:
        if action == "confirm":
            await sessions.confirm(booking, row.id, expected_version=version)
            return Outcome(done="confirmed")
        if action == "cancel":
            await sessions.cancel(booking, row.id, CLIENT_CANCEL_REASON, expected_version=version)
            return Outcome(done="cancelled")
        start = _parse_start(form.get("start", ""))
        if start is None:
            return Outcome(
                message="Please choose one of the times below.", status=422, show_times=True
            )
        await sessions.reschedule(
            booking, row.id, start, None, any_therapist=True, expected_version=version
        )
        return Outcome(done="moved")
    except domain.StaleVersion:
        return Outcome(
            message="This page was out of date, so nothing was changed. "
            "Here is your appointment as it is now.",
            status=409,
        )
    except domain.IllegalTransition:
        return Outcome(message="This appointment can no longer be changed here.", status=409)
    except (domain.TooSoon, domain.TooFar):
        return Outcome(
            message="That time can no longer be booked online. Please choose another time.",
            status=422,
            show_times=True,
        )
    except TAKEN:
        return Outcome(
            message="Sorry, that time was just taken. Please choose another time.",
            status=409,
            show_times=True,
        )
    except DomainError:
        return Outcome(
            message="That time is not available. Please choose another time.",
            status=409,
            show_times=True,
        )


def _parse_start(raw: str) -> datetime | None:
    try:
        return as_utc(datetime.fromisoformat(raw))
    except ValueError:
        return None


async def free_times(booking: Booking, row: db.Session) -> list[domain.Slot]:
    """Free starts of the next two weeks for the same treatment at the same location."""
    now = booking.clock()
    try:
        return await availability.search(
            booking,
            service_id=row.treatment_id,
            location_id=row.location_id,
            start=now,
            end=now + timedelta(days=RESCHEDULE_DAYS),
            scope=EVERYTHING,  # the signed link is the client's key to this one session
        )
    except DomainError:
        return []  # a retired treatment: nothing to offer, the page says to call
