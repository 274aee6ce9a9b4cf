"""Forwarding to an upstream: which headers go (the gateway's own and the client's payment
never do), and the request itself on aiohttp's client."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from bitcoind_paychan.gateway.routes import Route
from bitcoind_paychan.transport.paidhttp.wire import (
    CHALLENGE_HEADER,
    CLOSED_HEADER,
    RECEIPT_HEADER,
    SCHEME,
    SESSION_HEADER,
)

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
    "TE", "Trailer", "Transfer-Encoding", "Upgrade"))
# The protocol's own headers: between the client and the gateway only, in both directions.
OWN = frozenset(h.lower() for h in (SESSION_HEADER, CLOSED_HEADER, RECEIPT_HEADER,
                                    "Payment-Authorization"))
NOT_FORWARDED = HOP_BY_HOP | OWN | {"host", "content-length"}


def _dropped(headers: Mapping[str, str]) -> frozenset[str]:
    """Hop-by-hop headers, and those the `Connection` header names."""
    named = {name.strip().lower() for value in _all(headers, "Connection")
             for name in value.split(",")}
    return NOT_FORWARDED | named


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    return list(getall(name, [])) if getall else [v for k, v in headers.items()
                                                    if k.lower() == name.lower()]


def request_headers(headers: Mapping[str, str], peer: str | None, scheme: str,
                    trusted: bool = False) -> CIMultiDict[str]:
    """What goes upstream of a client's request headers: not the hop-by-hop ones, not the
    protocol's, not a `Payment` credential (another scheme's Authorization does go); with
    X-Forwarded-For (the peer appended to what a `trusted` proxy said; from anyone else the
    peer alone) and X-Forwarded-Proto."""
    dropped = _dropped(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in dropped or lowered.startswith("x-forwarded-"):
            continue
        if lowered == "authorization" and value.strip().lower().startswith(SCHEME.lower()):
            continue
        out.add(name, value)
    forwarded = ", ".join(_all(headers, "X-Forwarded-For")) if trusted else ""
    if peer:
        out["X-Forwarded-For"] = f"{forwarded}, {peer}" if forwarded else peer
    out["X-Forwarded-Proto"] = scheme
    return out


def response_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """What goes to the client of an upstream's answer: not the hop-by-hop headers, and
    nothing of the protocol (an upstream cannot forge a receipt or a challenge of ours)."""
    dropped = _dropped(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in dropped:
            continue
        if lowered == CHALLENGE_HEADER.lower() and value.strip().lower().startswith(
                SCHEME.lower()):
            continue
        out.add(name, value)
    return out


class Upstreams:
    """One aiohttp client for every upstream (its connection pool; bodies passed through
    as they are, not decompressed)."""

    def __init__(self) -> None:
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(auto_decompress=False, cookie_jar=aiohttp
                                               .DummyCookieJar())
        return self._http

    async def send(self, route: Route, request: web.Request, trusted: bool = False
                   ) -> aiohttp.ClientResponse:
        """`request` sent to `route`'s upstream (`trusted`: its peer is a trusted proxy), its
        answer's headers read (aiohttp's ClientError or a TimeoutError if it cannot be); the
        caller reads and releases it."""
        url = route.upstream_url(request.path, request.rel_url.raw_query_string)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=route.timeout,
                                        sock_read=route.timeout)
        peer = request.remote
        headers = request_headers(request.headers, peer, request.scheme, trusted)
        body = request.content if request.body_exists else None
        return await self.http.request(request.method, url, headers=headers, data=body,
                                       timeout=timeout, allow_redirects=False)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
