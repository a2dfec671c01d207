"""The webhook dispatcher sends only where the outbound policy allows, checked at every
request (a partner's name may resolve elsewhere after its URL was accepted), and a
refused request is an unsuccessful attempt (retried, then failed), never a send."""

from __future__ import annotations

from typing import Any, cast

import httpx
import pytest

from services.referrals import signing
from services.referrals.delivery import WebhookDispatcher
from services.referrals.usecases import Referrals
from services.referrals.usecases.webhooks import OutgoingWebhook
from shared.outbound import OutboundPolicy
from tests.referrals_support import webhook_receiver

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "whsec_guard_test"


def dispatcher(policy: OutboundPolicy) -> WebhookDispatcher:
    app = Referrals(uow=cast(Any, None), secretbox=cast(Any, None), outbound=policy)
    return WebhookDispatcher(
        app,
        timeout_seconds=5,
        backoff_seconds=1,
        backoff_max_seconds=1,
        concurrency=2,
        poll_seconds=60,
    )


def outgoing(url: str) -> OutgoingWebhook:
    return OutgoingWebhook("d-1", "r-1", "requested", url, SECRET, b"{}", attempt=1)


async def test_a_webhook_to_an_unlisted_local_host_is_refused_and_never_sent() -> None:
    async with webhook_receiver() as receiver:
        receiver.secret = SECRET
        refusing = dispatcher(OutboundPolicy())
        refusing.open()
        try:
            await refusing._deliver(outgoing(receiver.url))
            answers = list(refusing._answers)
            refusing._answers.clear()
        finally:
            await refusing.stop()
        assert receiver.received == []
        [answer] = answers
        assert not answer.ok and answer.status_code is None
        assert answer.error is not None and "OutboundRefused" in answer.error

        url = httpx.URL(receiver.url)
        allowing = dispatcher(OutboundPolicy.of([f"{url.host}:{url.port}"]))
        allowing.open()
        try:
            await allowing._deliver(outgoing(receiver.url))
            allowing._answers.clear()
        finally:
            await allowing.stop()
        [received] = receiver.received
        assert received.verified  # signed with the partner's secret
        signing.verify(SECRET, received.headers["x-referral-signature"], received.body)
        assert received.headers["x-referral-delivery"] == "d-1"
        assert received.headers["content-type"] == "application/fhir+json"
