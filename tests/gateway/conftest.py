"""The gateway between a real upstream (an aiohttp app started here) and paying clients,
its channels on the in-process chain (tests/service's `MemSides`: the services' decisions
are the point, not the node; test_e2e.py runs one on real nodes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.gateway import Gateway, Price, Route
from bitcoind_paychan.gateway.payer import Payer, PendingPayment
from bitcoind_paychan.service.client import ClientManager
from bitcoind_paychan.service.server import ServerManager
from bitcoind_paychan.store.leases import Leases
from bitcoind_paychan.store.sql import SQLStore
from bitcoind_paychan.transport.http import WebServer
from bitcoind_paychan.transport.limits import PeerLimits
from bitcoind_paychan.transport.paidhttp import Offer
from bitcoind_paychan.transport.paidhttp.link import http_dialer
from bitcoind_paychan.transport.proxies import TrustedProxies
from tests.service.conftest import FAST, Duo, MemSides

PRICE = 100
EVENT_SIZE = 58  # bytes of each event of /api/events
OPEN = ServerPolicy().min_payment  # the opening payment: the channel's first credit
VALUE = 200_000


@dataclass
class Upstream:
    """A real HTTP service behind the gateway; `seen`: each request it got (path, headers)."""

    url: str
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # /api/stall waits on it
    ticks: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)  # /api/ticks
    frames: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)  # /api/ws
    heard: list[str] = field(default_factory=list)  # what /api/ws's clients sent


def upstream_app(upstream: Upstream) -> web.Application:
    async def hello(request: web.Request) -> web.StreamResponse:
        upstream.seen.append((request.path_qs, dict(request.headers)))
        return web.json_response({"path": request.path, "query": dict(request.query)},
                                 headers={"Payment-Receipt": "forged", "X-Up": "1"})

    async def data(request: web.Request) -> web.StreamResponse:
        upstream.seen.append((request.path_qs, dict(request.headers)))
        size = int(request.query.get("n", "1000"))
        if request.query.get("chunked"):
            answer = web.StreamResponse()
            await answer.prepare(request)
            for start in range(0, size, 4096):
                await answer.write(b"x" * min(4096, size - start))
            await answer.write_eof()
            return answer
        return web.Response(body=b"x" * size)

    async def events(request: web.Request) -> web.StreamResponse:
        """`n` Server-Sent Events of EVENT_SIZE bytes each."""
        upstream.seen.append((request.path_qs, dict(request.headers)))
        answer = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await answer.prepare(request)
        for n in range(int(request.query["n"])):
            await answer.write(b"data: %06d" % n + b"." * (EVENT_SIZE - 14) + b"\n\n")
        await answer.write_eof()
        return answer

    async def ticks(request: web.Request) -> web.StreamResponse:
        """Server-Sent Events as the test puts them in `ticks` (None: the end)."""
        upstream.seen.append((request.path_qs, dict(request.headers)))
        answer = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await answer.prepare(request)
        while (event := await upstream.ticks.get()) is not None:
            await answer.write(event)
        await answer.write_eof()
        return answer

    async def ws(request: web.Request) -> web.StreamResponse:
        """A WebSocket: sends what the test puts in `frames` (None: closes), keeps what the
        client sends in `heard` and echoes it."""
        upstream.seen.append((request.path_qs, dict(request.headers)))
        socket = web.WebSocketResponse()
        await socket.prepare(request)

        async def listen() -> None:
            async for message in socket:
                upstream.heard.append(message.data)
                await socket.send_str("echo " + message.data)

        listening = asyncio.ensure_future(listen())
        while (frame := await upstream.frames.get()) is not None:
            await socket.send_bytes(frame)
        await socket.close()
        listening.cancel()
        return socket

    async def fail(request: web.Request) -> web.StreamResponse:
        upstream.seen.append((request.path_qs, dict(request.headers)))
        return web.json_response({"error": "upstream is broken"}, status=503)

    async def stall(request: web.Request) -> web.StreamResponse:
        upstream.seen.append((request.path_qs, dict(request.headers)))
        await upstream.release.wait()
        return web.Response(text="late")

    async def cut(request: web.Request) -> web.StreamResponse:
        """Promises 10,000 bytes (or `?length=`), sends 100, hangs up."""
        upstream.seen.append((request.path_qs, dict(request.headers)))
        length = request.query.get("length", "10000")
        answer = web.StreamResponse(headers={"Content-Length": length})
        await answer.prepare(request)
        await answer.write(b"y" * 100)
        assert request.transport is not None
        request.transport.close()
        return answer

    app = web.Application()
    app.router.add_route("*", "/api/data", data)
    app.router.add_get("/api/fail", fail)
    app.router.add_get("/api/events", events)
    app.router.add_get("/api/ticks", ticks)
    app.router.add_get("/api/stall", stall)
    app.router.add_get("/api/ws", ws)
    app.router.add_get("/api/cut", cut)
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


# Upstreams relative to the upstream's root: /bytes/api/data → /api/data.
ROUTES = (
    Route("/api", "/api", Price("request", PRICE)),
    Route("/bytes", "", Price("byte", 1, reserve=5_000, quantity=10), timeout=5.0),
    Route("/free", "/free", Price("free")),
    Route("/gratis", "", Price("free")),
    Route("/slow", "", Price("request", PRICE), timeout=0.2),
    Route("/held", "", Price("request", PRICE)),  # /held/api/stall: until `release`
    Route("/meter", "", Price("byte", 1, reserve=5_000, quantity=10)),  # streams: top up
    Route("/short", "", Price("byte", 1, reserve=5_000, quantity=10), timeout=0.3),
    Route("/live", "", Price("second", 100, reserve=500)),  # streams by the test's clock
)


@dataclass
class Clock:
    """The gateway's clock in these tests: it moves when the test says."""

    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Bench:
    """The upstream, the gateway before it, and a paying client."""

    upstream: Upstream
    url: str  # the gateway's root (no trailing slash)
    gateway: Gateway
    manager: ServerManager
    payer: Payer
    http: aiohttp.ClientSession

    async def get(self, path: str, headers: dict[str, str] | None = None, *,
                  method: str = "GET") -> tuple[int, Any, dict[str, str]]:
        """(status, body: JSON if it is, else bytes, or None if it was cut short, headers)
        of a GET (or `method`) through the gateway."""
        url = URL(self.url + path, encoded=True)  # as written: dot segments too
        async with self.http.request(method, url, headers=headers) as response:
            try:
                body = await response.read()
            except aiohttp.ClientPayloadError:  # the connection closed before its end
                return response.status, None, dict(response.headers)
            try:
                parsed: Any = await response.json(content_type=None)
            except ValueError:
                parsed = body
            return response.status, parsed, dict(response.headers)

    async def offer(self, path: str) -> Offer:
        status, body, _ = await self.get(path)
        assert status == 402, body
        return Offer.from_json(json.dumps(body))

    async def paid(self, path: str, amount: int
                   ) -> tuple[int, Any, dict[str, str], PendingPayment]:
        """GET `path` paying `amount` (the payment settled with the answer's receipt)."""
        payment = await self.payer.pay(await self.offer(path), amount)
        status, body, headers = await self.get(path, payment.header)
        await payment.settle(headers)
        return status, body, headers, payment


def routed(routes: Sequence[Route], upstream: str) -> list[Route]:
    return [Route(r.path, upstream + r.upstream, r.price, r.timeout) for r in routes]


@dataclass
class Served:
    """The upstream and the gateway before it (at `url`), its channels run by `manager`."""

    upstream: Upstream
    url: str
    gateway: Gateway
    manager: ServerManager


@contextlib.asynccontextmanager
async def serving(sides: Duo, routes: Sequence[Route] = ROUTES,
                  limits: PeerLimits | None = None, clock: Clock | None = None,
                  proxies: TrustedProxies | None = None, in_flight: int = 16, port: int = 0,
                  store: SQLStore | None = None, leases: Leases | None = None,
                  policy: ServerPolicy | None = None) -> AsyncIterator[Served]:
    """The upstream and the gateway on `port` (0: a free one), its channels and credit in
    `store` (default: the SQLite store "gateway"; a restart: the block ends, another begins
    on the same store), under `policy` (default: ServerPolicy())."""
    store = store or sides.store("gateway")
    upstream = Upstream("")
    up_server = WebServer(upstream_app(upstream), "127.0.0.1", 0)
    up_host, up_port = await up_server.start()
    upstream.url = f"http://{up_host}:{up_port}"
    policy = policy or ServerPolicy()
    gateway = Gateway(routed(routes, upstream.url), policy, store=store,
                      clock=clock or Clock(), proxies=proxies,
                      max_requests_per_session=in_flight)

    def on_event(event: object) -> None:
        sides.events.append(event)  # type: ignore[arg-type]
        gateway.on_event(event)

    manager = ServerManager(sides.server_ports(), store, policy,
                            on_event=on_event, poll_interval=sides.poll_interval,
                            review_interval=0.5, autopilot=FAST, limits=limits,
                            leases=leases)
    await manager.start()
    server = WebServer(gateway.app(manager), "127.0.0.1", port)
    host, port = await server.start()
    try:
        yield Served(upstream, f"http://{host}:{port}", gateway, manager)
    finally:
        upstream.release.set()
        upstream.ticks.put_nowait(None)
        upstream.frames.put_nowait(None)
        await server.stop()
        await manager.stop()
        await up_server.stop()


@contextlib.asynccontextmanager
async def paying(sides: Duo) -> AsyncIterator[tuple[aiohttp.ClientSession, Payer]]:
    """A paying client, its channels in the store "client"."""
    async with (aiohttp.ClientSession() as http,
                ClientManager(sides.client_ports(), sides.store("client"),
                              dial=http_dialer(http), poll_interval=sides.poll_interval,
                              review_interval=0.5, autopilot=FAST) as client):
        yield http, Payer(client, VALUE)


@contextlib.asynccontextmanager
async def bench(sides: Duo, routes: Sequence[Route] = ROUTES,
                limits: PeerLimits | None = None, clock: Clock | None = None,
                proxies: TrustedProxies | None = None, in_flight: int = 16
                ) -> AsyncIterator[Bench]:
    async with (serving(sides, routes, limits, clock, proxies, in_flight) as served,
                paying(sides) as (http, payer)):
        yield Bench(served.upstream, served.url, served.gateway, served.manager, payer, http)


@pytest.fixture
def sides(tmp_path: Path) -> Iterator[MemSides]:
    sides = MemSides(tmp_path)
    yield sides
    sides.close()
