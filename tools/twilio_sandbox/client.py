"""A real ``twilio`` client pointed at the sandbox.

In twilio 9.13 every REST domain builds its URLs from ``Domain.base_url``
(``"https://api.twilio.com"`` for ``client.api``); ``Version`` and list paging
(``next_page_uri``) both go through ``Domain.absolute_url``, so replacing
``client.api.base_url`` reroutes fetch, create, update and paging alike.
``ClientBase.get_hostname`` would still rewrite the host into
``api.<edge>.<region>.twilio.com`` when an edge or region is set (also from the
``TWILIO_EDGE`` / ``TWILIO_REGION`` environment variables), so those are cleared.
"""

from __future__ import annotations

from twilio.http import HttpClient
from twilio.rest import Client

from .settings import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN


def sandbox_client(
    base_url: str = "http://127.0.0.1:8025",
    account_sid: str = DEFAULT_ACCOUNT_SID,
    auth_token: str = DEFAULT_AUTH_TOKEN,
    *,
    http_client: HttpClient | None = None,
) -> Client:
    """A ``twilio.rest.Client`` whose Messaging API calls go to the sandbox at ``base_url``.

    Pass ``http_client=AsyncTwilioHttpClient()`` to use the ``*_async`` methods.
    """
    client = Client(account_sid, auth_token, http_client=http_client)
    client.edge = None
    client.region = None
    client.api.base_url = base_url.rstrip("/")
    return client
