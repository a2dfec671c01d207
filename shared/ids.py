"""Identifiers: one function, so every row and event id has the same shape."""

from __future__ import annotations

import uuid


def new_id() -> str:
    """A random UUID4 as text: unique across services and replicas without coordination."""
    return str(uuid.uuid4())
