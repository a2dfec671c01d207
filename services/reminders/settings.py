"""Reminders' settings: the common ones plus its port, database, Twilio and scheduling."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field

from shared.settings import ServiceSettings

#: Documented development values, the same the Twilio sandbox uses by default.
SANDBOX_ACCOUNT_SID = "AC" + "0" * 32
SANDBOX_AUTH_TOKEN = "sandbox-auth-token"  # noqa: S105 - documented dev value
SANDBOX_FROM_NUMBER = "+15005550006"
#: Signs aftercare and referral links; a production process refuses to start with it.
DEV_LINK_SECRET = "dev-link-secret-change-me"  # noqa: S105 - documented dev value


def _is_twilio(url: str) -> bool:
    """Whether ``url`` is Twilio's own API (https, a twilio.com host), not a stand-in."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" and (host == "twilio.com" or host.endswith(".twilio.com"))


class RemindersSettings(ServiceSettings):
    reminders_port: int = 8002
    reminders_host: str = "127.0.0.1"
    reminders_database_url: str | None = None
    public_base_url: str | None = None
    migrate_on_start: bool = True
    default_phone_region: str = "US"

    # Twilio (the sandbox's documented values by default; see tools/twilio_sandbox).
    twilio_account_sid: str = SANDBOX_ACCOUNT_SID
    twilio_auth_token: str = SANDBOX_AUTH_TOKEN
    #: The sender: a number, or a Messaging Service (used when set).
    twilio_from_number: str = SANDBOX_FROM_NUMBER
    twilio_messaging_service_sid: str | None = None
    #: Where the twilio client sends its requests; unset means Twilio itself.
    twilio_api_base_url: str | None = None
    #: Seconds one create or list call may take before it counts as a timeout.
    twilio_timeout_seconds: float = Field(default=10.0, gt=0)

    # Sending.
    #: Messages per second per sender; 0 means no limit.
    sms_rate_per_second: float = Field(default=10.0, ge=0)
    #: Create calls in flight at once.
    sms_concurrency: int = Field(default=32, ge=1)
    #: Due texts a sender takes from the ``reminders.due`` queue at once. The next pull
    #: waits for the whole batch, so a batch must hold seconds of sending at the rate
    #: limit (512 at 50/s: ~10 s) for the wait at its end to cost little of the rate;
    #: their leases and results are each written in one statement, whatever the size.
    sms_pull_batch: int = Field(default=512, ge=1)
    #: Attempts for one message when Twilio answers 429, 5xx or times out.
    sms_max_attempts: int = Field(default=5, ge=1)
    #: First pause between attempts; doubles each time (with jitter).
    sms_retry_base_seconds: float = Field(default=1.0, ge=0)
    #: A sender that dies mid-send stops marking its texts in progress: another replica
    #: takes them after this long. A text still being sent when the marks could not reach
    #: NATS (a node's loss) is not sent twice: the row's send lease below says it is taken.
    sms_queue_ack_wait_seconds: float = Field(default=15.0, ge=1)
    #: The send lease on a ledger row: a replica asking the provider holds it (renewed every
    #: third) so a redelivered copy waits instead of sending too; a dead replica's lapses.
    sms_send_lease_seconds: float = Field(default=15.0, ge=1)
    #: Deliveries of one due text before it is dead-lettered (a text that could not be
    #: told sent or not that many times; the active instance settles it later).
    sms_queue_max_deliver: int = Field(default=20, ge=1)

    # What the texts and pages say when no location is known (HELP, referrals).
    clinic_name: str = "the clinic"
    clinic_phone: str = ""
    clinic_timezone: str = "America/New_York"

    # Default rules' quiet hours (a location may override them with PUT /v1/rules).
    #: Texts go out between these local times ("HH:MM"; the end may be "24:00").
    quiet_hours_start: str = "09:00"
    quiet_hours_end: str = "20:00"

    # Links in texts.
    reminders_link_secret: str = DEV_LINK_SECRET
    aftercare_link_days: int = Field(default=14, ge=1)
    #: A folder of aftercare files replacing the shipped ones (see services/reminders/aftercare).
    aftercare_dir: Path | None = None

    # One active scheduler.
    #: Seconds a scheduler lease lives without renewal; a standby takes over after it.
    scheduler_lease_seconds: float = Field(default=10.0, ge=1)
    #: Due jobs the scheduler starts per pass; it yields to the event loop between passes.
    scheduler_jobs_per_pass: int = Field(default=200, ge=1)
    #: How often the planner looks for sessions to plan when nobody woke it.
    planner_poll_seconds: float = Field(default=5.0, gt=0)

    def development_defaults(self) -> list[str]:
        """Production refuses these: with the sandbox's token anyone can sign a STOP."""
        found = super().development_defaults()
        if self.reminders_link_secret == DEV_LINK_SECRET:
            found.append("REMINDERS_LINK_SECRET is the documented development value")
        if self.twilio_account_sid == SANDBOX_ACCOUNT_SID:
            found.append("TWILIO_ACCOUNT_SID is the sandbox's account")
        if self.twilio_auth_token == SANDBOX_AUTH_TOKEN:
            found.append("TWILIO_AUTH_TOKEN is the sandbox's token")
        if self.sender == SANDBOX_FROM_NUMBER:
            found.append("TWILIO_FROM_NUMBER is the sandbox's number (and no Messaging Service)")
        if self.twilio_api_base_url and not _is_twilio(self.twilio_api_base_url):
            found.append(
                "TWILIO_API_BASE_URL points at the sandbox (or anywhere but https://*.twilio.com)"
            )
        return found

    @property
    def database_url(self) -> str:
        return self.reminders_database_url or self.sqlite_url("reminders")

    @property
    def base_url(self) -> str:
        return (self.public_base_url or f"http://127.0.0.1:{self.reminders_port}").rstrip("/")

    @property
    def sender(self) -> str:
        """Who the rate limit counts for: the Messaging Service, else the number."""
        return self.twilio_messaging_service_sid or self.twilio_from_number
