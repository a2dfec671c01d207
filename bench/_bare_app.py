"""The baseline of ``bench/booking.py``: a bare FastAPI endpoint with nothing behind it.

One POST route that parses a small pydantic body (the shape of a booking request) and
answers JSON. No database, no auth, no broker: what uvicorn + FastAPI + pydantic cost on
this machine. Started like booking, as its own uvicorn process::

    python -m uvicorn _bare_app:app --app-dir bench --host 127.0.0.1 --port 8099 \
        --log-level warning --no-access-log
"""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict


class BookingLike(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_id: str
    service_id: str
    location_id: str
    start: datetime
    therapist_id: str | None = None


class Answer(BaseModel):
    id: str
    status: str
    client_id: str
    service_id: str
    location_id: str
    start: datetime


app = FastAPI(title="bare baseline")


@app.post("/v1/sessions", status_code=201, response_model=Answer)
async def book(body: BookingLike) -> Answer:
    return Answer(
        id=str(uuid.uuid4()),
        status="booked",
        client_id=body.client_id,
        service_id=body.service_id,
        location_id=body.location_id,
        start=body.start,
    )


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
