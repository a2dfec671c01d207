"""The cursor codec of shared.pagination: a cursor gives back the key it was made of, and
anything else is a 422 naming ``cursor`` (never a 500, never a silent first page)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.errors import InvalidRequest
from shared.pagination import decode_cursor, encode_cursor


def test_a_cursor_round_trips_its_key_and_is_url_safe() -> None:
    start = datetime(2031, 3, 4, 9, 30, tzinfo=timezone(timedelta(hours=-5)))
    token = encode_cursor([start, "0b6f-id", 7])
    assert all(c.isalnum() or c in "-_" for c in token)
    assert decode_cursor(token, (datetime, str, int)) == (start.astimezone(UTC), "0b6f-id", 7)


@pytest.mark.parametrize(
    "token",
    [
        "not a cursor!",
        "%%%",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        base64.urlsafe_b64encode(b"{}").decode(),
        base64.urlsafe_b64encode(b'["a"]').decode(),  # too short for the key
        base64.urlsafe_b64encode(b'[1,"id"]').decode(),  # a number where an instant goes
        base64.urlsafe_b64encode(b'[{"t":"2031-03-04T09:30:00"},"id"]').decode(),  # naive
        base64.urlsafe_b64encode(b'[{"t":"yesterday"},"id"]').decode(),
        "A" * 3000,
    ],
)
def test_a_tampered_or_foreign_cursor_is_refused_naming_cursor(token: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        decode_cursor(token, (datetime, str))
    assert refused.value.field == "cursor"


def test_a_cursor_of_another_list_is_refused() -> None:
    clients = encode_cursor(["Lopez", "Maria", "id-1"])
    with pytest.raises(InvalidRequest):
        decode_cursor(clients, (datetime, str))


def test_keyset_pages_walk_every_row_once_both_ways() -> None:
    """The keyset filter on a real (SQLite) table: ties on the first key are broken by id,
    newest-first pages (``descending``) mirror oldest-first ones."""
    from sqlalchemy import Column, DateTime, MetaData, String, Table, create_engine, insert, select

    from shared.pagination import PageRequest, keyset

    rows = Table("rows", MetaData(), Column("at", DateTime), Column("id", String, primary_key=True))
    engine = create_engine("sqlite://")
    rows.metadata.create_all(engine)
    base = datetime(2031, 1, 1)
    data = [(base + timedelta(hours=h), f"id{n}") for n, h in enumerate([3, 1, 2, 1, 3, 0, 1])]
    with engine.begin() as conn:
        conn.execute(insert(rows), [{"at": at, "id": ident} for at, ident in data])

    def walk(descending: bool) -> list[tuple[datetime, str]]:
        seen: list[tuple[datetime, str]] = []
        page = PageRequest(limit=2)
        while True:
            query = keyset(
                select(rows.c.at, rows.c.id),
                page,
                (rows.c.at, rows.c.id),
                (datetime, str),
                descending=descending,
            )
            with engine.connect() as conn:
                got = [(r.at, r.id) for r in conn.execute(query)]
            seen += got[:2]
            if len(got) <= 2:
                return seen
            page = PageRequest(limit=2, cursor=encode_cursor(list(got[1])))

    assert walk(False) == sorted(data)
    assert walk(True) == sorted(data, reverse=True)
