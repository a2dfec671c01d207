"""Keys as booking announces them: a ``booking.apikey.issued`` event published to NATS, for
tests of reminders or referrals run without booking; and waiting until a key works."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from shared import events
from shared.auth import hash_key, new_key
from shared.ids import new_id
from tests.support import eventually
from tools.kit.events import publish


async def grant_key(
    nats_url: str, role: str = "front_desk", location_ids: Sequence[str] = ()
) -> tuple[str, str]:
    """Announce a new key as booking would; returns its id and the key."""
    key, key_id = new_key(), new_id()
    data = events.ApiKeyEvent(
        id=key_id,
        role=role,  # type: ignore[arg-type]
        location_ids=list(location_ids),
        sha256=hash_key(key),
    )
    await publish(
        nats_url, events.make_event(events.APIKEY_ISSUED, "booking", data, subject=key_id)
    )
    return key_id, key


async def key_answers(
    base_url: str, key: str, path: str, status: int, timeout: float = 5.0
) -> None:
    """Wait (at most ``timeout`` seconds) until ``GET path`` with ``key`` answers ``status``."""
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as http:

        async def answered() -> bool:
            return (await http.get(path)).status_code == status

        await eventually(answered, timeout=timeout, what=f"{path} to answer {status}")
