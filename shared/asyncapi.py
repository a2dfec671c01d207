"""Each service's AsyncAPI 3.0 document, generated from the contract in ``shared.events``.

One channel per subject (its address is the subject), one message per subject whose
payload is the CloudEvents envelope carrying that subject's payload model, a ``send``
operation for each subject the service publishes and a ``receive`` operation for each
subject each of its durable subscriptions takes (``x-durable``, ``x-stream`` and
``x-filter-subject`` say how). The schemas are pydantic's, in serialization mode: what
is on the wire.

Why not FastStream's generator: it makes one channel per subscriber keyed by its title,
takes a subscriber's payload from its handler's signature (ours take the raw message, to
dead-letter what does not parse), names messages ``<channel>:Message`` and schemas
``CloudEvent[SessionEvent]``, which the spec's component-key rule
(``^[a-zA-Z0-9.\\-_]+$``) does not allow, and would need a second broker just to describe
this one. The contract already holds every fact the document needs.
"""

from __future__ import annotations

from functools import cache
from typing import Any, cast
from urllib.parse import urlsplit

from pydantic import create_model
from pydantic.json_schema import models_json_schema

from shared.events import (
    PAYLOAD_TYPES,
    CloudEvent,
    Payload,
    publications,
    subscriptions,
)

ASYNCAPI_VERSION = "3.0.0"
_SCHEMAS = "#/components/schemas/"


@cache
def envelope(payload: type[Payload]) -> type[CloudEvent[Any]]:
    """The envelope carrying ``payload``, named ``<Payload>Envelope`` in the document."""
    model = create_model(
        f"{payload.__name__}Envelope",
        __base__=CloudEvent[payload],  # type: ignore[valid-type]
        __module__=__name__,
    )
    model.__doc__ = f"A CloudEvents 1.0 envelope whose ``data`` is a {payload.__name__}."
    return cast("type[CloudEvent[Any]]", model)


def servers(nats_url: str) -> dict[str, Any]:
    """The NATS servers of ``nats_url`` (a comma-separated list), credentials left out."""
    hosts = [urlsplit(u.strip()) for u in nats_url.split(",") if u.strip()]
    found = {
        f"nats-{i}" if len(hosts) > 1 else "nats": {
            "host": f"{u.hostname}:{u.port or 4222}",
            "protocol": "nats",
            "description": "NATS JetStream; every subject below is stored in its stream.",
        }
        for i, u in enumerate(hosts, start=1)
        if u.hostname
    }
    return found


def _summary(model: type[Payload]) -> str:
    return (model.__doc__ or model.__name__).strip().splitlines()[0]


def document(
    service: str,
    *,
    title: str,
    version: str,
    nats_url: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of what ``service`` publishes and consumes."""
    published = publications(service)
    consumed = subscriptions(service)
    subjects = sorted({*published, *(s for sub in consumed for s in sub.subjects)})
    payloads = sorted({PAYLOAD_TYPES[s] for s in subjects}, key=lambda m: m.__name__)
    _, defs = models_json_schema(
        [(envelope(m), "serialization") for m in payloads],
        ref_template=_SCHEMAS + "{model}",
    )
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for subject in subjects:
        model = PAYLOAD_TYPES[subject]
        messages[subject] = {
            "name": subject,
            "title": subject,
            "summary": _summary(model),
            "contentType": "application/json",
            "payload": {
                "allOf": [
                    {"$ref": f"{_SCHEMAS}{envelope(model).__name__}"},
                    {"properties": {"type": {"const": subject}}},
                ]
            },
        }
        channels[subject] = {
            "address": subject,
            "messages": {subject: {"$ref": f"#/components/messages/{subject}"}},
        }

    def operation(action: str, subject: str, summary: str, **extra: Any) -> dict[str, Any]:
        return {
            "action": action,
            "summary": summary,
            "channel": {"$ref": f"#/channels/{subject}"},
            "messages": [{"$ref": f"#/channels/{subject}/messages/{subject}"}],
            **extra,
        }

    operations = {
        f"send.{subject}": operation("send", subject, f"{service} publishes {subject}.")
        for subject in published
    }
    for sub in consumed:
        for subject in sub.subjects:
            operations[f"receive.{sub.durable}.{subject}"] = operation(
                "receive",
                subject,
                sub.summary,
                **{
                    "x-durable": sub.durable,
                    "x-stream": sub.stream,
                    "x-filter-subject": sub.subject,
                },
            )
    doc: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": (
                f"The events {service} publishes and consumes over NATS JetStream. A "
                "subject is the CloudEvents `type`; the event `id` is sent as "
                "`Nats-Msg-Id`. Consumers are durable pull consumers named "
                "`<service>-<purpose>`; what a handler cannot apply ends in "
                "`dlq.<stream>.<consumer>`. Payloads grow by optional fields only."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": defs.get("$defs", {})},
    }
    if nats_url and (found := servers(nats_url)):
        doc["servers"] = found
    return doc
