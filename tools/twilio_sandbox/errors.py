"""Twilio's error answers: ``{code, message, more_info, status}`` with the matching HTTP status.

The real ``twilio`` client turns exactly this shape into ``TwilioRestException`` with
``status`` and ``code`` set, which is what services branch on, so the sandbox must
answer it and not FastAPI's ``{"detail": ...}``.
"""

from __future__ import annotations

from typing import Any

#: code -> (HTTP status, message template). Templates may use {to}, {from_}, {sid}, {path}.
CATALOG: dict[int, tuple[int, str]] = {
    20001: (400, "Invalid parameter"),
    20003: (401, "Authenticate"),
    20009: (400, "Cannot redact a message that is not yet in a final state"),
    20404: (404, "The requested resource {path} was not found"),
    20429: (429, "Too Many Requests"),
    20500: (500, "Internal Server Error"),
    20503: (503, "Service Unavailable"),
    21211: (400, "The 'To' number {to} is not a valid phone number."),
    21408: (
        400,
        "Permission to send an SMS has not been enabled for the region indicated by "
        "the 'To' number: {to}.",
    ),
    21602: (400, "Message body is required."),
    21603: (400, "A 'From' phone number is required."),
    21604: (400, "A 'To' phone number is required."),
    21606: (
        400,
        "The From phone number {from_} is not a valid, SMS-capable inbound phone number "
        "or short code for your account.",
    ),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21612: (
        400,
        "The 'To' phone number: {to}, is not currently reachable using the 'From' phone "
        "number: {from_} via SMS.",
    ),
    21614: (400, "'To' number {to} is not a valid mobile number"),
    21617: (400, "The concatenated message body exceeds the 1600 character limit."),
    21705: (400, "The Messaging Service Sid {sid} is invalid."),
    30409: (400, "This message cannot be canceled"),
    35111: (400, "SendAt timestamp is missing"),
    35114: (400, "Scheduling does not support this timestamp"),
    35118: (400, "MessagingServiceSid is required to schedule a message"),
}

#: Delivery errors reported on the message and in status callbacks, not as HTTP answers.
DELIVERY_ERRORS: dict[int, str] = {
    30001: "Queue overflow",
    30002: "Account suspended",
    30003: "Unreachable destination handset",
    30004: "Message blocked",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
}

#: Code used when only an HTTP status is given for a fault.
DEFAULT_CODE_FOR_STATUS: dict[int, int] = {
    400: 20001,
    401: 20003,
    404: 20404,
    429: 20429,
    500: 20500,
    503: 20503,
}


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


class TwilioError(Exception):
    """An error the API answers in Twilio's JSON shape."""

    def __init__(
        self,
        code: int,
        *,
        status: int | None = None,
        message: str | None = None,
        **fields: Any,
    ) -> None:
        default_status, template = CATALOG.get(code, (400, "Error {code}"))
        self.code = code
        self.status = status or default_status
        self.message = message or template.format_map(_Blank(fields, code=code))
        super().__init__(f"{self.status} {self.code}")

    def payload(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


def delivery_status(code: int) -> str:
    """Final status for a delivery error.

    Twilio reports ``failed`` when the message never left its queue and ``undelivered``
    when a carrier refused it; the sandbox uses ``failed`` for 30001/30002/30008 so both
    paths can be exercised.
    """
    return "failed" if code in (30001, 30002, 30008) else "undelivered"


def delivery_message(code: int) -> str:
    return DELIVERY_ERRORS.get(code, "Delivery failure")
