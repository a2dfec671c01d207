"""Settings of the Twilio sandbox, read from the environment.

The account SID and token reuse Twilio's own variable names (``TWILIO_ACCOUNT_SID``,
``TWILIO_AUTH_TOKEN``) so that a service and the sandbox started from the same
environment agree on credentials without extra wiring. Everything else is prefixed
``SANDBOX_``. Lists and maps (number patterns) are given as JSON, for example
``SANDBOX_RATE_LIMITED_TO='["+1555*"]'``. Patterns are shell-style globs
(``*``, ``?``, ``[0-9]``) matched against the ``To`` number.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Documented development credentials. They are not secrets: the sandbox is a local stand-in.
DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_AUTH_TOKEN = "sandbox-auth-token"  # noqa: S105 - documented dev value
DEFAULT_MESSAGING_SERVICE_SID = "MG" + "0" * 32
#: Twilio's magic "valid sender" test number.
DEFAULT_FROM_NUMBER = "+15005550006"

#: Twilio's magic ``To`` numbers for test credentials, and the error each one answers.
MAGIC_REJECTIONS: dict[str, int] = {
    "+15005550001": 21211,  # invalid 'To' number
    "+15005550002": 21612,  # cannot route to this number
    "+15005550003": 21408,  # no permission for the region
    "+15005550004": 21610,  # recipient unsubscribed (blocked)
    "+15005550009": 21614,  # not a mobile number, cannot receive SMS
}

#: Sandbox-only numbers whose messages are accepted and then fail on the "network":
#: +1500555300N fails with error 3000N (N = 3..8).
DELIVERY_FAILURE_NUMBERS: dict[str, int] = {f"+1500555300{n}": 30000 + n for n in range(3, 9)}


class SandboxSettings(BaseSettings):
    """Everything the sandbox can be told at start-up; faults can also be set at run time."""

    model_config = SettingsConfigDict(
        env_prefix="SANDBOX_", env_file=None, extra="ignore", populate_by_name=True
    )

    account_sid: str = Field(
        default=DEFAULT_ACCOUNT_SID,
        pattern=r"^AC[0-9a-fA-F]{32}$",
        validation_alias="TWILIO_ACCOUNT_SID",
    )
    auth_token: str = Field(
        default=DEFAULT_AUTH_TOKEN,
        min_length=1,
        validation_alias="TWILIO_AUTH_TOKEN",
    )
    host: str = "127.0.0.1"
    port: int = 8025
    #: Where a phone's reply is posted, as Twilio posts an incoming SMS to the number's webhook.
    inbound_url: str = "http://127.0.0.1:8002/twilio/inbound"
    #: Twilio answers HELP itself unless the Messaging Service's Advanced Opt-Out hands HELP
    #: to the application. The clinic configures it so (its answer names the clinic and its
    #: phone), so by default the sandbox leaves HELP to the application: one answer, not two.
    twilio_answers_help: bool = False
    #: The one phone number the sandbox account owns; ``From`` must be this number.
    from_number: str = DEFAULT_FROM_NUMBER
    messaging_service_sid: str = Field(
        default=DEFAULT_MESSAGING_SERVICE_SID, pattern=r"^MG[0-9a-fA-F]{32}$"
    )

    #: Pause before each status step (queued, sent, delivered): the "network" latency.
    step_delay_ms: int = Field(default=50, ge=0)
    #: Extra attempts for a status callback whose receiver is down or answers 5xx.
    callback_retries: int = Field(default=3, ge=0)
    #: First pause between callback attempts; doubles on each retry.
    callback_retry_delay_ms: int = Field(default=100, ge=0)
    callback_timeout_s: float = Field(default=5.0, gt=0)
    #: Twilio waits up to 15 s for an incoming-message webhook to answer.
    webhook_timeout_s: float = Field(default=15.0, gt=0)

    #: ``To`` pattern -> Twilio error code answered with HTTP 400 on create.
    reject_to: dict[str, int] = Field(default_factory=lambda: dict(MAGIC_REJECTIONS))
    #: ``To`` patterns answered with 429 / 20429.
    rate_limited_to: list[str] = Field(default_factory=lambda: ["+15005550429"])
    #: ``To`` patterns answered with 500 / 20500.
    server_error_to: list[str] = Field(default_factory=lambda: ["+15005550500"])
    #: ``To`` patterns whose create answer is delayed by ``slow_ms``.
    slow_to: list[str] = Field(default_factory=lambda: ["+15005550901"])
    slow_ms: int = Field(default=2000, ge=0)
    #: ``To`` pattern -> delivery error (30003..30008) reported through status callbacks.
    delivery_failures: dict[str, int] = Field(
        default_factory=lambda: dict(DELIVERY_FAILURE_NUMBERS)
    )
