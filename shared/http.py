"""Hostile HTTP input, refused before any route, parser or API-key check sees it.

One ASGI middleware for every service:

- a body over the limit gets 413 without being read (from ``Content-Length``) or as soon
  as the bytes read pass the limit (chunked bodies): a 200 MB upload without a key costs
  the server at most the limit, never a parse;
- a JSON body that is not UTF-8, or a form body whose fields do not decode as UTF-8, gets
  400 (the routes, Twilio's signature check among them, only ever see text);
- a ``Content-Length`` that is no number gets 400;
- a NUL character (U+0000) in the path, the query or a JSON or form body gets 400: no
  field of ours holds one, and PostgreSQL refuses it in text (a 500 from deep inside a
  query), while SQLite would store it.

Routes that take more (a partner's report upload) get their own limit by method and path.
The body is read once here and replayed to the application.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Methods whose body this middleware reads and checks (others pass untouched).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: A JSON ``\u0000`` escape, not itself escaped (an even number of backslashes before it).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_NUL_DETAIL = "the request carries a NUL character (U+0000), which no field accepts"


@dataclass(frozen=True)
class RouteLimit:
    """A larger (or smaller) body limit for requests of ``method`` on paths matching ``path``."""

    method: str
    path: str  # a regular expression, matched in full
    max_bytes: int


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def undecodable(content_type: str, body: bytes) -> str | None:
    """Why ``body`` cannot be read as text of its ``content_type``, or ``None`` when it can."""
    media = content_type.split(";", 1)[0].strip().lower()
    if not body:
        return None
    try:
        if media == "application/json" or media.endswith("+json"):
            body.decode("utf-8")
            if _JSON_NUL.search(body):
                return _NUL_DETAIL
        elif media == "application/x-www-form-urlencoded":
            fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
            if any("\x00" in name or "\x00" in value for name, value in fields):
                return _NUL_DETAIL
    except UnicodeDecodeError:
        return f"the request body is not valid UTF-8 ({media})"
    return None


def nul_in_target(scope: Scope) -> bool:
    """Whether the request's path or query string holds a NUL character once decoded."""
    query = scope.get("query_string", b"").decode("latin-1")
    return "\x00" in scope["path"] or "\x00" in unquote_plus(query)


class HostileInputGuard:
    """The middleware; see the module's docstring."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, route_limits: Sequence[RouteLimit] = ()
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._routes = [(r.method.upper(), re.compile(r.path), r.max_bytes) for r in route_limits]

    def limit_for(self, method: str, path: str) -> int:
        for route_method, pattern, limit in self._routes:
            if route_method == method and pattern.fullmatch(path):
                return limit
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if nul_in_target(scope):
            await _answer(send, 400, _NUL_DETAIL)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _answer(send, 400, "Content-Length is not a number")
                return
            if int(declared) > limit:
                await _answer(send, 413, f"the request body is larger than {limit} bytes")
                return
        if scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _answer(send, 413, f"the request body is larger than {limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        reason = undecodable(headers.get(b"content-type", b"").decode("latin-1"), body)
        if reason is not None:
            await _answer(send, 400, reason)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def install_input_guard(app: FastAPI, settings: Any, *route_limits: RouteLimit) -> None:
    """Put the guard in front of ``app`` with ``settings.max_body_bytes`` (``MAX_BODY_BYTES``)."""
    app.add_middleware(
        HostileInputGuard,
        max_body_bytes=settings.max_body_bytes,
        route_limits=route_limits,
    )
