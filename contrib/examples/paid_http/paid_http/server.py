"""The paid API: an aiohttp app whose requests cost `price` sat each, paid through a channel.

    api = PaidApi(ServerPolicy(), price=100, content=my_handler)
    manager = ServerManager(wallet, store, policy, on_event=api.on_event)
    runner = await run_api(api, manager, "127.0.0.1", 8402)
    # POST /paychan: the channel endpoint; /api/...: paid

A request with no payment gets 402 and the offer. A request whose payment the server-side
manager verified and stored is served, with the PAYMENT_ACK in its answer. Anything else is
refused and nothing is served: a header that does not parse (400), a session that does not
exist or has no channel (402: open or resume one), a payment that is not new (402: replayed or
old), one below the price (402: underpaid), one the manager refused (400: bad signature...;
the manager hangs up that session, so the client resumes in a new one).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.service.server import ServerManager
from bitcoind_paychan.transport.paidhttp import (
    CHALLENGE_HEADER,
    CLOSED_HEADER,
    MAX_FRAMES_BODY,
    PAYMENT_HEADER,
    RECEIPT_HEADER,
    Offer,
    Sessions,
    challenge,
    receipt,
)
from bitcoind_paychan.transport.paidhttp.server import (
    Refused,
    at_least,
    endpoint,
    error,
    take_payment,
)
from bitcoind_paychan.transport.paidhttp.sessions import session_event

log = logging.getLogger(__name__)
ENDPOINT = "/paychan"
Content = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def echo(request: web.Request) -> web.StreamResponse:
    """The example's paid content: what was asked, echoed back."""
    return web.json_response({"path": request.path, "query": dict(request.query)})


class PaidApi:
    """Serves `content` under /api/ at `price` sat per request, paid through channels opened
    at /paychan. The server manager must be built with `on_event=api.on_event`: that is how
    a session learns its channel and each payment stored."""

    def __init__(self, policy: ServerPolicy, price: int, content: Content = echo) -> None:
        if price < policy.min_increment:
            raise ValueError(f"price {price} is below the server's minimum increment "
                             f"{policy.min_increment}")
        self.policy = policy
        self.price = price
        self.content = content
        self._sessions: Sessions | None = None
        self.served = 0

    def app(self, server: ServerManager) -> web.Application:
        """The aiohttp app, its channels run by `server` (built with `on_event=self.on_event`)."""
        sessions = self._sessions = Sessions(server)
        app = web.Application(client_max_size=MAX_FRAMES_BODY)
        app.router.add_post(ENDPOINT, self.endpoint)
        app.router.add_route("*", "/api/{tail:.*}", self.paid)
        app.on_shutdown.append(lambda _: sessions.close_all())
        return app

    @property
    def sessions(self) -> Sessions:
        if self._sessions is None:
            raise RuntimeError("PaidApi.app(server) builds the sessions")
        return self._sessions

    def on_event(self, event: object) -> None:
        """The manager's events, in the task of the session whose message caused them."""
        session_event(event)

    def offer(self, request: web.Request) -> Offer:
        return Offer(price=self.price, endpoint=str(request.url.with_path(ENDPOINT)
                                                     .with_query(None)),
                     min_channel_value=self.policy.min_channel_size,
                     open_payment=self.policy.min_payment, versions=self.policy.versions)

    # -- handlers ------------------------------------------------------------------------

    async def paid(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get(PAYMENT_HEADER)
        if header is None:
            return self._payment_required(request, "payment required")
        taken = await take_payment(self.sessions, header, at_least(self.price))
        if isinstance(taken, Refused):
            if taken.status == 402:
                return self._payment_required(request, taken.why)
            return error(taken.status, taken.why, closed=taken.closed)
        session, ack, stored = taken.session, taken.ack, taken.amount
        try:
            response = await self.content(request)
        except Exception:  # paid for, so it gets its ack: the client's payment is settled
            log.exception("serving %s failed", request.path)
            response = error(500, "the request was paid for but serving it failed")
        self.served += 1
        response.headers[RECEIPT_HEADER] = receipt(ack, stored, 0)
        if session.closed:
            response.headers[CLOSED_HEADER] = "1"  # used up: the server settled it
        return response

    async def endpoint(self, request: web.Request) -> web.StreamResponse:
        """POST frames to a session (a new one without Paychan-Session); get its answers."""
        return await endpoint(self.sessions, request)  # the library's handler

    def _payment_required(self, request: web.Request, why: str) -> web.Response:
        offer = self.offer(request)
        body = json.loads(offer.to_json()) | {"error": why}
        return web.json_response(body, status=402, headers={
            CHALLENGE_HEADER: challenge(offer, request.host), "Cache-Control": "no-store"})


async def run_api(api: PaidApi, server: ServerManager, host: str, port: int) -> web.AppRunner:
    """Start `server`'s autopilot and serve `api` on host:port; `cleanup()` the runner, then
    `server.stop()`, to stop."""
    await server.start()
    runner = web.AppRunner(api.app(server))
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
