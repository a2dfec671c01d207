"""What the sandbox does with a request, apart from HTTP: validate, fault, store, deliver.

Checks run in the order a real send meets them: the fault rules first (a rate
limit or an outage answers before anything is looked at), then the parameters,
then the recipient's opt-out state.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from .errors import TwilioError
from .faults import FaultBook, FaultPlan
from .network import Network
from .settings import SandboxSettings
from .store import E164, FINAL_STATUSES, Message, Store, keyword, new_sid, now

#: Statuses from which a message can still be canceled.
CANCELABLE = frozenset({"scheduled", "accepted", "queued"})

#: Twilio's default answers to opt-out, opt-in and help keywords.
AUTO_REPLIES = {
    "stop": (
        "You have successfully been unsubscribed. You will not receive any more messages "
        "from this number. Reply START to resubscribe."
    ),
    "start": (
        "You have successfully been re-subscribed to messages from this number. "
        "Reply HELP for help. Reply STOP to unsubscribe. Msg&Data Rates May Apply."
    ),
    "help": "Reply STOP to unsubscribe. Msg&Data Rates May Apply.",
}

Form = dict[str, list[str]]


def _one(form: Form, name: str) -> str | None:
    values = form.get(name)
    return values[-1] if values else None


class Sandbox:
    """The state and behaviour behind the HTTP endpoints."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.store = Store()
        self.faults = FaultBook(settings)
        self.network = Network(settings, self.store)

    def reset(self) -> None:
        """Forget messages, opt-outs, run-time faults and the request log."""
        self.store.reset()
        self.faults.clear()

    async def create(self, form: Form) -> Message:
        """Handle ``POST .../Messages.json``, logging the attempt whatever its outcome."""
        entry: dict[str, Any] = {
            "received_at": time.time(),
            "to": _one(form, "To"),
            "fields": sorted(form),
            "http_status": None,
            "code": None,
            "sid": None,
        }
        self.store.log_request(entry)
        try:
            message = await self._create(form, entry["received_at"])
        except TwilioError as err:
            entry.update(http_status=err.status, code=err.code)
            raise
        entry.update(http_status=201, sid=message.sid)
        return message

    async def _create(self, form: Form, arrived: float) -> Message:
        settings = self.settings
        to = (_one(form, "To") or "").strip()
        sender = _one(form, "From")
        service = _one(form, "MessagingServiceSid")
        body = _one(form, "Body") or ""

        plan = self.faults.plan(to) if to else FaultPlan()
        if plan.delay_ms:
            await asyncio.sleep(plan.delay_ms / 1000)
        if plan.reject is not None:
            rule = plan.reject
            assert rule.code is not None
            raise TwilioError(
                rule.code, status=rule.http_status, message=rule.message, to=to, from_=sender
            )

        if not to:
            raise TwilioError(21604)
        if not E164.match(to):
            raise TwilioError(21211, to=to)
        if not sender and not service:
            raise TwilioError(21603)
        if sender and sender != settings.from_number:
            raise TwilioError(21606, from_=sender)
        if service and service != settings.messaging_service_sid:
            raise TwilioError(21705, sid=service)
        if not body and not (form.get("MediaUrl") or _one(form, "ContentSid")):
            raise TwilioError(21602)
        if len(body) > 1600:
            raise TwilioError(21617)
        if to in self.store.opted_out:
            raise TwilioError(21610)

        send_at = self._send_at(form, service)
        status = "scheduled" if send_at else ("queued" if sender else "accepted")
        message = Message(
            sid=new_sid(),
            account_sid=settings.account_sid,
            direction="outbound-api",
            to=to,
            from_=sender,
            body=body,
            status=status,
            messaging_service_sid=service,
            status_callback=_one(form, "StatusCallback"),
            send_at=send_at,
            received_at=arrived,
        )
        self.store.add(message)
        self.network.spawn(self.network.deliver(message, plan.delivery_error))
        return message

    @staticmethod
    def _send_at(form: Form, service: str | None) -> datetime | None:
        """``SendAt`` for ``ScheduleType=fixed``; Twilio's 15-minute minimum is not enforced."""
        if _one(form, "ScheduleType") != "fixed":
            return None
        raw = _one(form, "SendAt")
        if not raw:
            raise TwilioError(35111)
        if not service:
            raise TwilioError(35118)
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise TwilioError(35114) from None
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        if moment <= datetime.now(UTC):
            raise TwilioError(35114)
        return moment

    def find(self, sid: str, path: str) -> Message:
        message = self.store.get(sid)
        if message is None:
            raise TwilioError(20404, path=path)
        return message

    def update(self, message: Message, form: Form) -> Message:
        """``Status=canceled`` cancels a pending message; ``Body=""`` redacts a finished one."""
        status = _one(form, "Status")
        if status is not None:
            if status != "canceled":
                raise TwilioError(20001, message="Status can only be set to 'canceled'")
            if message.status not in CANCELABLE:
                raise TwilioError(30409)
            message.set_status("canceled")
            if message.status_callback:
                self.network.spawn(self.network.status_callback(message))
        body = _one(form, "Body")
        if body is not None:
            if body != "":
                raise TwilioError(20001, message="Body can only be set to '' to redact it")
            if message.status not in FINAL_STATUSES:
                raise TwilioError(20009)
            message.body = ""
            message.date_updated = now()
        return message

    def delete(self, message: Message) -> None:
        if message.status not in FINAL_STATUSES:
            raise TwilioError(20009, message="Cannot delete this resource before it is complete")
        del self.store.messages[message.sid]

    async def reply(self, phone: str, body: str) -> dict[str, Any]:
        """A phone texts the clinic: record it, apply opt-out keywords, post the webhook."""
        settings = self.settings
        if not E164.match(phone):
            raise TwilioError(21211, message=f"{phone!r} is not an E.164 phone number")
        inbound = self.store.add(
            Message(
                sid=new_sid(),
                account_sid=settings.account_sid,
                direction="inbound",
                to=settings.from_number,
                from_=phone,
                body=body,
                status="received",
                messaging_service_sid=settings.messaging_service_sid,
                date_sent=now(),
            )
        )
        word = keyword(body)
        if word == "stop":
            self.store.opted_out.add(phone)
        elif word == "start":
            self.store.opted_out.discard(phone)
        if word is not None and (word != "help" or settings.twilio_answers_help):
            self._outbound_reply(phone, AUTO_REPLIES[word], from_twilio=True)
        result = await self.network.inbound_webhook(inbound, word.upper() if word else None)
        replies = [self._outbound_reply(phone, text) for text in result.replies]
        return {
            "sid": inbound.sid,
            "keyword": word,
            "opted_out": phone in self.store.opted_out,
            "webhook_url": settings.inbound_url,
            "webhook_status": result.status,
            "webhook_error": result.error,
            "replies": [{"sid": m.sid, "body": m.body, "status": m.status} for m in replies],
        }

    def _outbound_reply(self, phone: str, text: str, *, from_twilio: bool = False) -> Message:
        """A TwiML answer (or Twilio's own keyword answer) sent back to the phone.

        Like Twilio, an app's reply to an opted-out phone is not sent: it fails with 21610.
        """
        message = self.store.add(
            Message(
                sid=new_sid(),
                account_sid=self.settings.account_sid,
                direction="outbound-reply",
                to=phone,
                from_=self.settings.from_number,
                body=text,
                status="queued",
                messaging_service_sid=self.settings.messaging_service_sid,
            )
        )
        if phone in self.store.opted_out and not from_twilio:
            message.error_code = 21610
            message.error_message = "Attempt to send to unsubscribed recipient"
            message.set_status("failed")
        else:
            self.network.spawn(self.network.deliver(message, None))
        return message
