"""Outbound URL policy: the server never calls its own network on someone's behalf.

Calendar links (booking) and partner webhooks (referrals) are URLs an admin types; without
a policy they could point at 127.0.0.1, a private range or 169.254.169.254 and make the
server read internal services. A URL is refused when its host resolves to a loopback,
private, link-local, unspecified, multicast or reserved address, unless its ``host:port``
is listed in ``OUTBOUND_ALLOWED_HOSTS`` (``host:*`` allows every port of that host: for
development and tests). The check runs when the URL is stored (422) and again before
every request and every redirect hop, since a name can resolve differently later.

A name that does not resolve at all passes the policy: the request then fails on its own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

_DEFAULT_PORTS = {"http": 80, "https": 443, "webcal": 443}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class OutboundRefused(httpx.TransportError):
    """The URL's host is (or resolves to) an address the server must not call.

    A ``TransportError`` so callers that handle httpx failures handle this one too.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)


def forbidden(address: Address) -> str | None:
    """Why ``address`` is off limits, or ``None`` when it is a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for reason, hit in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("unspecified", address.is_unspecified),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    ):
        if hit:
            return reason
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "private"
    return None


_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT, not public


def _target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise OutboundRefused(f"only http(s) URLs with a host may be called, not {scheme or url!r}")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise OutboundRefused("the URL's port is not a number") from exc
    return parts.hostname.lower().rstrip("."), port


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


@dataclass(frozen=True)
class OutboundPolicy:
    """Which outbound URLs may be called; see the module's docstring."""

    allowed: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_settings(cls, settings: Any) -> OutboundPolicy:
        """From ``settings.outbound_allowed_hosts`` (``OUTBOUND_ALLOWED_HOSTS``)."""
        return cls.of(str(settings.outbound_allowed_hosts or "").split(","))

    @classmethod
    def of(cls, hosts: Iterable[str]) -> OutboundPolicy:
        return cls(frozenset(h.strip().lower() for h in hosts if h.strip()))

    def _listed(self, host: str, port: int) -> bool:
        return f"{host}:{port}" in self.allowed or f"{host}:*" in self.allowed

    def _judge(self, host: str, port: int, addresses: Iterable[Address]) -> None:
        for address in addresses:
            reason = forbidden(address)
            if reason is not None:
                raise OutboundRefused(
                    f"{host}:{port} resolves to a {reason} address ({address}); "
                    "list it in OUTBOUND_ALLOWED_HOSTS to allow it"
                )

    def check(self, url: str) -> None:
        """Raise :class:`OutboundRefused` when ``url`` may not be called (blocking DNS)."""
        host, port = _target(url)
        if self._listed(host, port):
            return
        literal = _literal(host)
        if literal is not None:
            self._judge(host, port, [literal])
            return
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return
        self._judge(host, port, _addresses(infos))

    async def acheck(self, url: str) -> None:
        """:meth:`check` without blocking the event loop."""
        host, port = _target(url)
        if self._listed(host, port):
            return
        literal = _literal(host)
        if literal is not None:
            self._judge(host, port, [literal])
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError):
            return
        self._judge(host, port, _addresses(infos))

    def transport(self, **kwargs: Any) -> GuardedTransport:
        """An httpx transport that checks every request (so every redirect hop) first."""
        return GuardedTransport(self, httpx.AsyncHTTPTransport(**kwargs))

    def guard_session(self, session: Any) -> None:
        """Make a ``requests``/``niquests`` session check every request it sends.

        Every hop of a redirect goes through the mounted adapters' ``send``, so wrapping
        it catches redirects as well (caldav talks through such a session).
        """
        for prefix in ("http://", "https://"):
            adapter = session.get_adapter(prefix)
            if getattr(adapter, "_outbound_guarded", False):
                continue
            original = adapter.send

            def send(request: Any, *args: Any, _send: Any = original, **kwargs: Any) -> Any:
                self.check(str(request.url))
                return _send(request, *args, **kwargs)

            adapter.send = send
            adapter._outbound_guarded = True


def _addresses(infos: Iterable[Any]) -> list[Address]:
    found = []
    for info in infos:
        literal = _literal(str(info[4][0]))
        if literal is not None:
            found.append(literal)
    return found


class GuardedTransport(httpx.AsyncBaseTransport):
    """Checks each request's URL against the policy before the inner transport sends it."""

    def __init__(self, policy: OutboundPolicy, inner: httpx.AsyncBaseTransport) -> None:
        self.policy = policy
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self.policy.acheck(str(request.url))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def short_reason(status: int, reason: str | None = None) -> str:
    """What a failed call stores: the status and a short reason, never the body."""
    text = (reason or "").strip()[:60]
    return f"HTTP {status}" + (f" {text}" if text else "")
