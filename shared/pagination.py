"""Cursor pagination for every list endpoint: bounded pages, stable under inserts.

A list answers at most ``limit`` rows (default 100, at most 200; more is a 422). When more
rows follow, the response carries an opaque ``cursor`` for the next page in two headers,
``X-Next-Cursor: <cursor>`` and ``Link: <url>; rel="next"``; the body stays a JSON list so
existing callers keep working. The cursor encodes the sort key of the last row sent (e.g.
``(start_at, id)``), and the next page is read by keyset filtering,
``WHERE (key, id) > (last key, last id) ORDER BY key, id LIMIT n + 1``, so a page costs an
index range read however deep it is, and rows written meanwhile are neither skipped nor
repeated. Scope filters are applied by the caller's query as before; a forged cursor can only
move the position inside what the caller may see. A cursor that does not decode to the key
of the endpoint is refused with 422 naming ``cursor``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Request, Response
from sqlalchemy import Select, and_, or_
from sqlalchemy.sql.elements import ColumnElement

from shared.errors import InvalidRequest

DEFAULT_LIMIT = 100
MAX_LIMIT = 200

#: The types a sort key may hold; each is encoded so it decodes back to the same type.
KeyValue = str | int | datetime
T = TypeVar("T")
S = TypeVar("S", bound=Select[Any])


def encode_cursor(values: Sequence[KeyValue]) -> str:
    """An opaque, URL-safe token for a row's sort key."""
    items: list[Any] = []
    for value in values:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            items.append({"t": value.astimezone(UTC).isoformat()})
        elif isinstance(value, (str, int)) and not isinstance(value, bool):
            items.append(value)
        else:
            raise TypeError(f"cannot put a {type(value).__name__} in a cursor")
    raw = json.dumps(items, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str, kinds: Sequence[type]) -> tuple[KeyValue, ...]:
    """The sort key in ``token``, checked against ``kinds`` (e.g. ``(datetime, str)``).

    Anything else (bad base64, bad JSON, wrong length or types) is a 422 on ``cursor``.
    """
    try:
        if len(token) > 2000:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        items = json.loads(raw)
        if not isinstance(items, list) or len(items) != len(kinds):
            raise ValueError("wrong shape")
        values: list[KeyValue] = []
        for item, kind in zip(items, kinds, strict=True):
            if kind is datetime:
                if not isinstance(item, dict) or not isinstance(item.get("t"), str):
                    raise ValueError("not an instant")
                instant = datetime.fromisoformat(item["t"])
                if instant.tzinfo is None:
                    raise ValueError("naive instant")
                values.append(instant.astimezone(UTC))
            elif kind is int:
                if not isinstance(item, int) or isinstance(item, bool):
                    raise ValueError("not an integer")
                values.append(item)
            elif kind is str:
                if not isinstance(item, str) or len(item) > 1000:
                    raise ValueError("not a string")
                values.append(item)
            else:  # pragma: no cover - a programming error, not a caller's
                raise TypeError(f"unsupported key type {kind!r}")
        return tuple(values)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise InvalidRequest(
            "cursor", "not a cursor this list issued; start again without one"
        ) from None


@dataclass(frozen=True)
class PageRequest:
    """What a caller asked for: at most ``limit`` rows after the (still encoded) ``cursor``."""

    limit: int = DEFAULT_LIMIT
    cursor: str | None = None


def page_params(
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"rows per page, at most {MAX_LIMIT}")
    ] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(max_length=2000, description="the X-Next-Cursor of the previous page"),
    ] = None,
) -> PageRequest:
    """The FastAPI dependency every list endpoint takes."""
    return PageRequest(limit=limit, cursor=cursor)


def keyset(
    query: S,
    page: PageRequest,
    columns: Sequence[Any],
    kinds: Sequence[type],
    *,
    descending: bool = False,
) -> S:
    """``query`` ordered by ``columns`` (the last one unique, e.g. ``id``), after the
    cursor's key, limited to one row more than the page (to learn whether more follow).

    ``descending`` pages newest first: every column descends, and "after" means smaller.
    """
    if page.cursor is not None:
        after = decode_cursor(page.cursor, kinds)
        query = query.where(_after(columns, after, descending))
    order = [column.desc() for column in columns] if descending else list(columns)
    return query.order_by(*order).limit(page.limit + 1)


def _after(
    columns: Sequence[Any], values: Sequence[KeyValue], descending: bool
) -> ColumnElement[bool]:
    """``(c1, c2, ...) > (v1, v2, ...)`` (``<`` when descending) spelled out, so each value
    binds with its column's type (instants stored as text on SQLite compare correctly)."""
    clauses = []
    for index, column in enumerate(columns):
        equal = [columns[i] == values[i] for i in range(index)]
        beyond = column < values[index] if descending else column > values[index]
        clauses.append(and_(*equal, beyond))
    return or_(*clauses)


def finish(
    rows: Sequence[T],
    page: PageRequest,
    key: Any,
    request: Request,
    response: Response,
) -> list[T]:
    """The page's rows; when more follow, the next cursor in ``X-Next-Cursor`` and ``Link``.

    ``key`` gives a row's sort key, in the order of the ``columns`` given to :func:`keyset`.
    """
    items = list(rows[: page.limit])
    if len(rows) > page.limit and items:
        token = encode_cursor(key(items[-1]))
        url = request.url.include_query_params(cursor=token, limit=page.limit)
        response.headers["X-Next-Cursor"] = token
        response.headers["Link"] = f'<{url}>; rel="next"'
    return items


#: The parameter a list route declares: ``page: Paged``.
Paged = Annotated[PageRequest, Depends(page_params)]
