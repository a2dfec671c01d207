"""Logs and dead-letter headers carry no full phone number, name or message body; SQL
parameters are hidden."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError
from sqlalchemy import text

from shared.db import create_engine
from shared.logging import redact, safe_error, scrub


class Client(BaseModel):
    first_name: str
    age: int


def test_a_validation_error_names_fields_never_values() -> None:
    with pytest.raises(ValidationError) as refused:
        Client.model_validate({"first_name": ["Maria Lopez"], "age": "+1 212 555 0199"})
    safe = safe_error(refused.value)
    assert safe.startswith("ValidationError: first_name: string_type; age: int_parsing")
    assert "Maria" not in safe and "555" not in safe


def test_exception_messages_lose_quoted_values_and_phones() -> None:
    exc = KeyError("no client 'Maria Lopez' with phone +12125550199 (text \"C please\")")
    safe = safe_error(exc)
    assert safe.startswith("KeyError: ")
    assert "Maria" not in safe and "+12125550199" not in safe and "please" not in safe
    assert "+121" in safe  # enough to tell numbers apart
    assert safe_error(RuntimeError("partner system is down")) == (
        "RuntimeError: partner system is down"
    )
    assert safe_error(RuntimeError()) == "RuntimeError"
    assert "\n" not in scrub("line one\nline two")
    assert len(scrub("x" * 1000, 500)) == 500


def test_log_events_drop_names_bodies_and_scrub_errors() -> None:
    event = redact(
        None,
        "info",
        {
            "event": "x",
            "first_name": "Maria",
            "last_name": "Lopez",
            "text": "C",
            "body": "Hi Maria",
            "phone": "+12125550199",
            "error": "ValueError: bad phone '+12125550199' for 'Maria'",
        },
    )
    assert event["first_name"] == event["last_name"] == event["text"] == "[redacted]"
    assert event["body"] == "[redacted]"
    assert "Maria" not in event["error"] and "+12125550199" not in event["error"]


async def test_sql_errors_never_show_parameters(tmp_path: object) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/x.db")
    try:
        async with engine.connect() as conn:
            with pytest.raises(Exception) as failed:
                await conn.execute(
                    text("INSERT INTO missing (phone) VALUES (:phone)"), {"phone": "+12125550199"}
                )
        assert "+12125550199" not in str(failed.value)
        assert "hidden due to hide_parameters" in str(failed.value)
    finally:
        await engine.dispose()
