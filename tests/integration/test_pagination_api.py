"""Cursor pagination over real HTTP (SQLite and PostgreSQL): paging through sessions and
clients two at a time gives every row once, in order, with ties on the sort key broken by
id; a page larger than 200 and a tampered cursor are 422s naming the parameter."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.booking_support import make_clinic
from tests.integration.test_booking_api import booking, next_monday_at, session_body

pytestmark = pytest.mark.asyncio(loop_scope="session")

__all__ = ["booking"]  # the fixture, imported for the tests below


async def every_page(http: httpx.AsyncClient, path: str, **params: Any) -> list[list[Any]]:
    """Follow ``X-Next-Cursor`` (and check ``Link`` says the same) until the last page."""
    pages: list[list[Any]] = []
    cursor: str | None = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        answer = await http.get(path, params=query)
        assert answer.status_code == 200, answer.text
        pages.append(answer.json())
        cursor = answer.headers.get("X-Next-Cursor")
        if cursor is None:
            assert "Link" not in answer.headers
            return pages
        assert f"cursor={cursor}" in answer.headers["Link"]
        assert answer.headers["Link"].endswith('; rel="next"')
        assert len(pages) < 20, "pagination does not end"


async def test_paging_sessions_and_clients_gives_every_row_once_in_order(booking: Any) -> None:
    http, _app = booking
    clinic = await make_clinic(http, rooms=2, therapists=2)
    others: list[str] = []
    for number, (first, last) in enumerate(
        [("Ana", "Zed"), ("Bea", "Abel"), ("Ana", "Zed"), ("Cy", "Moss"), ("Ana", "Abel")]
    ):
        made = await http.post(
            "/v1/clients",
            json={"first_name": first, "last_name": last, "phone": f"+1212555011{number}"},
        )
        assert made.status_code == 201, made.text
        others.append(made.json()["id"])
    # Two sessions share 13:00 (two clients, therapists and rooms): the id breaks the tie.
    for hour, client_id in ((9, None), (13, None), (11, None), (13, others[0]), (15, None)):
        body = session_body(clinic, next_monday_at(hour))
        if client_id:
            body["client_id"] = client_id
        made = await http.post("/v1/sessions", json=body)
        assert made.status_code == 201, made.text

    pages = await every_page(http, "/v1/sessions", limit=2)
    assert [len(p) for p in pages] == [2, 2, 1]
    sessions = [row for page in pages for row in page]
    keys = [(row["start"], row["id"]) for row in sessions]
    assert len({row["id"] for row in sessions}) == 5
    assert keys == sorted(keys)
    whole = (await http.get("/v1/sessions")).json()
    assert [row["id"] for row in whole] == [row["id"] for row in sessions]

    pages = await every_page(http, "/v1/clients", limit=2)
    clients = [row for page in pages for row in page]
    assert [len(p) for p in pages] == [2, 2, 2]  # Maria of the clinic and the five above
    assert len({row["id"] for row in clients}) == 6
    names = [(row["last_name"], row["first_name"], row["id"]) for row in clients]
    assert names == sorted(names)


async def test_a_page_over_200_or_a_bad_cursor_is_refused(booking: Any) -> None:
    http, _app = booking
    await make_clinic(http)
    for path in ("/v1/sessions", "/v1/clients"):
        too_many = await http.get(path, params={"limit": 201})
        assert too_many.status_code == 422
        assert "limit" in too_many.text
        assert (await http.get(path, params={"limit": 200})).status_code == 200
        for cursor in ("garbage!", "W10", "WyJ4Il0"):  # not base64; []; ["x"]
            bad = await http.get(path, params={"cursor": cursor})
            assert bad.status_code == 422, bad.text
            assert bad.json()["field"] == "cursor"
