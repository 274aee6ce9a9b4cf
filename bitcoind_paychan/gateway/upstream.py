"""Forwarding to an upstream: which headers go (the gateway's own and the client's payment
never do), the request itself on aiohttp's client, and reading its answer (each failure an
UpstreamFailed)."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from bitcoind_paychan.errors import UpstreamFailed
from bitcoind_paychan.gateway.routes import Route
from bitcoind_paychan.transport.paidhttp.wire import (
    CHALLENGE_HEADER,
    CLOSED_HEADER,
    CREDIT_HEADER,
    RECEIPT_HEADER,
    SCHEME,
    SESSION_HEADER,
)

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
    "TE", "Trailer", "Transfer-Encoding", "Upgrade"))
# The protocol's own headers: between the client and the gateway only, in both directions.
OWN = frozenset(h.lower() for h in (SESSION_HEADER, CLOSED_HEADER, CREDIT_HEADER,
                                    RECEIPT_HEADER, "Payment-Authorization"))
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
        answer's headers read (UpstreamFailed if it cannot be); the caller reads and releases
        it."""
        url = route.upstream_url(request.path, request.rel_url.raw_query_string)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=route.timeout,
                                        sock_read=route.timeout)
        peer = request.remote
        headers = request_headers(request.headers, peer, request.scheme, trusted)
        body = request.content if request.body_exists else None
        try:
            return await self.http.request(request.method, url, headers=headers, data=body,
                                           timeout=timeout, allow_redirects=False)
        except TimeoutError:
            raise UpstreamFailed(504, f"the upstream of {route.path} did not answer within "
                                      f"{route.timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamFailed(502, f"the upstream of {route.path} cannot be reached: "
                                      f"{exc}") from None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


CHUNK = 64 * 1024


SMALL = 64 * 1024  # bytes: an answer of a known length up to this is read whole first


async def read_chunk(upstream: aiohttp.ClientResponse) -> bytes:
    return await _reading(upstream.content.read(CHUNK))


async def read_whole(upstream: aiohttp.ClientResponse) -> bytes:
    """The whole body (one of a known, small length: `small`)."""
    return await _reading(upstream.read())


async def _reading(read: Awaitable[bytes]) -> bytes:
    """`read`, its failures UpstreamFailed."""
    try:
        return await read
    except TimeoutError:
        raise UpstreamFailed(504, "the upstream stopped sending its answer") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamFailed(502, f"the upstream broke off its answer: {exc}") from None


def small(request: web.Request, upstream: aiohttp.ClientResponse) -> bool:
    """The answer has a body of a known length up to SMALL bytes, worth reading whole before
    answering (one write to the client, its length kept); not a HEAD's, 204's or 304's."""
    length = upstream.content_length
    return (length is not None and length <= SMALL and request.method != "HEAD"
            and upstream.status not in (204, 304))


async def copy(upstream: aiohttp.ClientResponse, answer: web.StreamResponse,
                keep: int = 0) -> bytes | None:
    """Copy the body; what was copied if it is at most `keep` bytes, else None."""
    kept: bytearray | None = bytearray() if keep else None
    while chunk := await read_chunk(upstream):
        await answer.write(chunk)
        if kept is not None:
            kept += chunk
            if len(kept) > keep:
                kept = None
    return None if kept is None else bytes(kept)


def cut(request: web.Request, answer: web.StreamResponse) -> web.StreamResponse:
    """An answer cut short: its connection is closed before the body's end is sent, so the
    client sees it incomplete (not a shorter answer that looks whole)."""
    if request.transport is not None:
        request.transport.close()
    return answer


def request_id(request: web.Request) -> str:
    return f"{request.method} {request.path_qs}"


async def read_some(upstream: aiohttp.ClientResponse, limit: int = CHUNK) -> bytes:
    """Up to `limit` bytes of an answer not worth more (an upstream's error page)."""
    try:
        return await upstream.content.read(limit)
    except (TimeoutError, aiohttp.ClientError, OSError):
        return b""
