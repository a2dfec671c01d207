"""The page's signed link and form tokens, and the rule that only our own pages may post.

The link signer is also what the use cases call to put ``manage_url`` on every session
event and answer (``usecases.Booking.manage_url``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from itsdangerous import BadSignature, URLSafeSerializer

from services.booking import db

#: How long after a session's end its link still opens.
VALID_AFTER_END = timedelta(days=1)


class ManageLinks:
    """Signs and reads the page's link and its form tokens."""

    def __init__(self, secret_keys: list[str], base_url: str, *, enabled: bool = True) -> None:
        #: False in production while the documented development key is in force: anyone
        #: could sign links with it, so none is issued and none opens.
        self.enabled = enabled
        # itsdangerous signs with the LAST key and accepts all: ours are newest first.
        keys = list(reversed(secret_keys))
        self._links = URLSafeSerializer(keys, salt="booking.manage.link")
        self._forms = URLSafeSerializer(keys, salt="booking.manage.form")
        self.base_url = base_url.rstrip("/")

    def token(self, session_id: str) -> str:
        return str(self._links.dumps(session_id))

    def url(self, session_id: str) -> str | None:
        """The client's page for ``session_id``; None while links are disabled."""
        return f"{self.base_url}/m/{self.token(session_id)}" if self.enabled else None

    def session_id(self, token: str) -> str | None:
        if not self.enabled:
            return None
        try:
            value = self._links.loads(token)
        except BadSignature:
            return None
        return value if isinstance(value, str) else None

    def form_token(self, row: db.Session) -> str:
        return str(self._forms.dumps([row.id, row.version]))

    def form_version(self, token: str, session_id: str) -> int | None:
        """The session version a form was rendered for, or None when it is not ours."""
        try:
            value = self._forms.loads(token)
        except BadSignature:
            return None
        if (
            isinstance(value, list)
            and len(value) == 2
            and value[0] == session_id
            and isinstance(value[1], int)
        ):
            return value[1]
        return None


def is_open(row: db.Session, now: datetime) -> bool:
    return now <= row.end_at + VALID_AFTER_END


def same_site(headers: Any, own_origins: set[str]) -> bool:
    """Whether a POST may come from our own page (browsers send these headers)."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in {"same-origin", "none"}:
        return False
    origin = headers.get("origin")
    return origin is None or origin in own_origins


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def read_form(body: bytes) -> dict[str, str]:
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in fields.items() if v}
