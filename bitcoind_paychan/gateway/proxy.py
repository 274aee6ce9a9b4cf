"""The gateway: an aiohttp reverse proxy that sells its upstreams' answers through payment
channels (docs/paid-http.md says what goes over the wire; docs/config.md, `gateway:`, how a
route is priced).

    gateway = Gateway(routes, server.policy, store=store)  # server: a started ServerManager
    app = gateway.app(server)          # on `store`, whose on_event calls gateway.on_event

A request on a free route is forwarded. On a paid route, one without a `Payment` credential
gets 402 and the offer; one whose payment does not suffice (see `take_payment`) is refused
and never forwarded. A payment the manager stored adds to its channel's credit; the request
holds what it needs of it (its price, or for a price per byte all the credit, at least the
reserve), is forwarded, and is charged once the answer is known: the rest goes back to the
credit, and the answer's receipt says both. Not charged: an upstream that cannot be reached
or times out (502/504), answers 5xx, or breaks off its body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.errors import PaidHttpError, StoreError, UpstreamFailed
from bitcoind_paychan.gateway import metered, websocket
from bitcoind_paychan.gateway.credit import Credit
from bitcoind_paychan.gateway.replays import KEY_HEADER, MAX_ANSWER, MAX_KEY, Replays, valid_key
from bitcoind_paychan.gateway.routes import Route, route_for, unsafe_path
from bitcoind_paychan.gateway.upstream import (
    Upstreams,
    copy,
    cut,
    read_chunk,
    read_some,
    read_whole,
    request_headers,
    request_id,
    response_headers,
    small,
)
from bitcoind_paychan.store.base import shared
from bitcoind_paychan.store.credit import WITH_PAYMENT, CreditStore, PaymentTake
from bitcoind_paychan.transport.paidhttp.server import (
    Refused,
    Stored,
    at_least,
    endpoint,
    error,
    take_payment,
)
from bitcoind_paychan.transport.paidhttp.sessions import Acceptor, Sessions, session_event
from bitcoind_paychan.transport.paidhttp.wire import (
    CHALLENGE_HEADER,
    CREDIT_HEADER,
    MAX_FRAMES_BODY,
    PAYMENT_HEADER,
    RECEIPT_HEADER,
    SCHEME,
    SESSION_HEADER,
    Credential,
    Offer,
    challenge,
    parse_credential,
    receipt,
)
from bitcoind_paychan.transport.proxies import TrustedProxies

log = logging.getLogger(__name__)
access = logging.getLogger("bitcoind_paychan.gateway.access")  # what was charged for what
DEFAULT_ENDPOINT = "/paychan"
MAX_REQUESTS_PER_SESSION = 16  # paid requests of one channel served at once
# Sent upstream as soon as their take is decided, before it is durable (RFC 9110 9.2.1).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class Paid:
    """A request's stored payment and the credit it holds until it is charged."""

    stored: Stored
    held: int
    key: str | None = None  # its Idempotency-Key
    settled: bool = False  # charged (or handed to a meter): what it held is accounted for


class Gateway:
    """Routes requests to upstreams, charging paid routes through channels run by a server
    manager; the manager's `on_event` must call `on_event`."""

    def __init__(self, routes: Sequence[Route], policy: ServerPolicy,
                 endpoint_path: str = DEFAULT_ENDPOINT, *, store: CreditStore,
                 clock: Callable[[], float] = time.monotonic,
                 proxies: TrustedProxies | None = None,
                 max_requests_per_session: int = MAX_REQUESTS_PER_SESSION) -> None:
        for route in routes:
            if not route.price.free and route.price.needed < policy.min_increment:
                raise ValueError(f"route {route.path}: a request needs {route.price.needed} "
                                 f"sat, below the server's minimum increment "
                                 f"{policy.min_increment}")
        self.routes = tuple(routes)
        self.policy = policy
        self.endpoint_path = endpoint_path
        self.clock = clock  # a stream priced per second is timed by it
        self.proxies = proxies or TrustedProxies()  # whose X-Forwarded-For names the client
        self.max_requests_per_session = max_requests_per_session  # in flight at once
        self._in_flight: dict[str, int] = {}  # channel → its paid requests being served
        # In the store: shared, kept across restarts; takes decided at once when the store
        # is this process's alone.
        self.credit = Credit(store, alone=not shared(store))
        self.replays = Replays()
        self.upstreams = Upstreams()
        self._sessions: Sessions | None = None

    def app(self, server: Acceptor) -> web.Application:
        """The aiohttp application, its channels run by `server`."""
        sessions = self._sessions = Sessions(server)
        app = web.Application(client_max_size=MAX_FRAMES_BODY)
        async def channels(request: web.Request) -> web.StreamResponse:
            answer = await endpoint(sessions, request, self.credit.grew,
                                    self.client_of(request))
            session = sessions.get(answer.headers.get(SESSION_HEADER, ""))
            if session is not None and session.channel is not None:
                # Opened, resumed or topped up here (it may have been paid and spent
                # elsewhere): its credit read afresh, and told to the client.
                answer.headers[CREDIT_HEADER] = str(await self.credit.of(session.channel))
            return answer

        app.router.add_post(self.endpoint_path, channels)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_shutdown.append(lambda _: sessions.close_all())
        app.on_cleanup.append(lambda _: self.upstreams.close())
        return app

    @property
    def sessions(self) -> Sessions:
        if self._sessions is None:
            raise RuntimeError("Gateway.app(server) builds the sessions")
        return self._sessions

    def client_of(self, request: web.Request) -> str:
        """The client's address: the connection's, or what a trusted proxy says it is."""
        peer = request.remote or ""
        return self.proxies.client(peer, request.headers.getall(self.proxies.header, []))

    @staticmethod
    def on_event(event: object) -> None:
        """The server manager's events: the sessions learn their channels and payments."""
        session_event(event)

    def offer(self, request: web.Request, route: Route) -> Offer:
        price = route.price
        return Offer(price=price.price, unit=price.per, reserve=price.reserve,
                     quantity=price.quantity, min_increment=self.policy.min_increment,
                     endpoint=str(request.url.with_path(self.endpoint_path).with_query(None)),
                     min_channel_value=self.policy.min_channel_size,
                     open_payment=self.policy.min_payment, versions=self.policy.versions)

    # -- the handler -----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        why = unsafe_path(request.path)
        if why is not None:
            return error(400, f"path {request.path!r}: {why}")
        route = route_for(self.routes, request.path)
        if route is None:
            return error(404, f"no route serves {request.path}")
        if route.price.free:
            return await self._free(route, request)
        header = request.headers.get(PAYMENT_HEADER, "")
        if not header.strip().lower().startswith(SCHEME.lower()):
            return self._payment_required(request, route, "payment required")
        try:
            found: Credential | None = parse_credential(header)
        except PaidHttpError:
            found = None  # take_payment's refusal follows
        key = request.headers.get(KEY_HEADER)
        if key is not None:
            if not valid_key(key):
                return error(400, f"{KEY_HEADER}: expected 1 to {MAX_KEY} printable "
                                  "characters")
            replayed = await self._replay(request, header, found, key)
            if replayed is not None:
                return replayed
        channel = self._channel_of(found)
        busy = self._in_flight.get(channel, 0) if channel is not None else 0
        if busy >= self.max_requests_per_session:
            return error(429, f"{busy} requests of this session are in flight, the most the "
                              "gateway serves at once: wait for one to end (nothing was paid)")
        # From here the key (if any) is this request's: a retry meanwhile is refused (409).
        reserved = self.replays.reserve(channel, key, request_id(request))
        if channel is not None:
            self._in_flight[channel] = busy + 1
        try:
            return await self._pay_and_serve(route, request, header, key, found, channel)
        finally:
            if reserved is not None and reserved.status is None:  # not charged: forgotten
                self.replays.forget(*reserved.where)
            if channel is not None:
                self._in_flight[channel] -= 1
                if not self._in_flight[channel]:
                    del self._in_flight[channel]

    async def _pay_and_serve(self, route: Route, request: web.Request, header: str,
                             key: str | None, found: Credential | None, channel: str | None
                             ) -> web.StreamResponse:
        needed = route.price.needed
        everything = route.price.per in ("byte", "second")
        # The credit is taken in the transaction that stores the request's payment (one
        # commit), if it carries one and its session has a channel; else by `hold` below.
        made = (self.credit.with_payment(channel, needed, everything=everything)
                if channel is not None and found is not None and found.frame is not None
                and self.credit.may_ride(channel) else None)
        paying = take_payment(self.sessions, found or header,
                              lambda channel: self._lacking(channel, needed), credit=True)
        try:
            if made is None:
                taken = await paying
            else:  # in a task of its own, which finishes even if the request goes away
                exchange = self._exchange(paying, made)
                self.credit.riding(made)
                exchange.add_done_callback(lambda _: self.credit.rode(made))
                try:
                    taken = await asyncio.shield(exchange)
                except asyncio.CancelledError:  # what was taken with the payment goes back
                    exchange.add_done_callback(lambda _: self.credit.unclaimed(made))
                    raise
        except StoreError as exc:  # the payment (and its take) not stored: not acknowledged
            log.warning("storing a payment failed: %s", exc)
            return error(503, f"the gateway could not store the payment ({exc}): not "
                              "forwarded, not charged; resume the channel and retry later")
        finally:
            if made is not None:
                made.closed = True
        if isinstance(taken, Refused):
            if taken.status == 402:
                return self._payment_required(request, route, taken.why)
            return error(taken.status, taken.why, closed=taken.closed)
        # A price per request taken on its own may be decided at once (credit.hold_request);
        # if its commit is left to the takes' thread, a safe request goes upstream meanwhile
        # and the answer waits for the commit.
        committed: asyncio.Future[tuple[int | None, int]] | None = None
        try:
            if made is None and route.price.per == "request" and \
                    not websocket.is_upgrade(request):
                held, committed = await self.credit.hold_request(taken.channel, taken.amount,
                                                                 needed)
            else:
                held = await self.credit.hold(taken.channel, taken.amount, needed,
                                              everything=everything, made=made)
        except StoreError as exc:  # the payment is stored (credit), nothing was taken
            return self._take_failed(taken, exc)
        sending: asyncio.Future[aiohttp.ClientResponse] | None = None
        if committed is not None:
            if request.method in SAFE_METHODS:  # nothing done upstream that needs undoing
                sending = asyncio.ensure_future(self._send(route, request))
            try:
                # Cancelled with the request: given back once durable.
                await self.credit.committed(taken.channel, committed)
            except StoreError as exc:  # nothing taken: the upstream's answer not released
                if sending is not None:
                    _abandon(sending)
                return self._take_failed(taken, exc, forwarded=sending is not None)
            except BaseException:
                if sending is not None:
                    _abandon(sending)
                raise
        if held is None:  # another request of this channel took the credit meanwhile
            why = ("the channel's credit was spent by another request meanwhile: pay again"
                   if taken.amount else f"the channel's credit does not cover the request "
                   f"({needed} sat): pay with it")
            answer = self._payment_required(request, route, why)
            answer.headers[RECEIPT_HEADER] = await self._receipt(taken, 0)
            return answer
        paid = Paid(taken, held, key)
        if key is not None:
            self.replays.paid_by(taken.channel, key, taken.ack)
        try:
            return await self._paid(route, request, paid, sending)
        except Exception:
            if paid.settled:
                raise
            log.exception("serving %s %s failed", request.method, request.path)
            return await self._charged(error(500, "the gateway failed to serve the request; it was "
                                            "not charged"), route, request, paid, 0)
        except BaseException:  # cancelled (the gateway stops): the credit held goes back
            if not paid.settled:
                paid.settled = True
                await self.credit.give_back(taken.channel, held)
            raise

    @staticmethod
    def _exchange(paying: Coroutine[Any, Any, Stored | Refused], made: PaymentTake
                  ) -> asyncio.Task[Stored | Refused]:
        """`paying` (take_payment) in a task of its own, `made` to take with its payment."""
        token = WITH_PAYMENT.set(made)
        try:
            return asyncio.ensure_future(paying)
        finally:
            WITH_PAYMENT.reset(token)

    def _channel_of(self, found: Credential | None) -> str | None:
        """The channel of the session a credential names, if it parsed and has one."""
        if found is None:
            return None
        session = self.sessions.get(found.session)
        return session.channel if session is not None else None

    async def _replay(self, request: web.Request, header: str, found: Credential | None,
                      key: str) -> web.StreamResponse | None:
        """The kept answer to a retry of a request already charged (not charged again; a
        new payment it carries is stored and credited), a refusal, or None: not a retry."""
        if found is None:
            return None  # the usual refusal follows
        session = self.sessions.get(found.session)
        channel = session.channel if session is not None else None
        replay = self.replays.get(channel, key) if channel is not None else None
        if session is None or channel is None or replay is None:
            return None
        if replay.request != request_id(request):
            return error(422, f"{KEY_HEADER} {key!r} was used for {replay.request}: expected "
                              "the same request, or a new key")
        if replay.status is None:
            return error(409, f"the request with {KEY_HEADER} {key!r} is in progress: wait "
                              "for its answer")
        if replay.body is None:
            return error(409, f"the request with {KEY_HEADER} {key!r} was answered and "
                              f"charged {replay.charged} sat once; its answer (a stream, or "
                              "too large) is not kept: a new key buys it again")
        ack = replay.ack  # a replay's receipt: the ack alone (what came with it went once)
        frames: tuple[bytes, ...] = ()
        if found.message is not None and session.change is not None and \
                found.message.update_payment.client_change_value < session.change:
            taken = await take_payment(self.sessions, header,
                                       at_least(self.policy.min_increment))
            if isinstance(taken, Refused):
                return error(taken.status, taken.why, closed=taken.closed)
            self.credit.grew(channel, taken.amount)
            ack, frames = taken.ack, taken.frames
        answer = web.Response(status=replay.status, body=replay.body, headers=replay.headers)
        answer.headers[RECEIPT_HEADER] = receipt(ack, 0, await self.credit.of(channel), frames)
        access.info("charged 0 sat for %s %s -> %d, channel %s: answered again for %s %r "
                    "(charged %d sat the first time)", request.method, request.path,
                    replay.status, channel, KEY_HEADER, key, replay.charged)
        return answer

    def _keep(self, paid: Paid, cost: int, answer: web.StreamResponse,
              body: bytes | None) -> None:
        """Keep a charged answer for a retry with the request's Idempotency-Key, if any."""
        if paid.key is not None and cost > 0:
            self.replays.finish(paid.stored.channel, paid.key, cost, answer.status,
                                response_headers(answer.headers), body)

    async def _free(self, route: Route, request: web.Request) -> web.StreamResponse:
        if websocket.is_upgrade(request):
            return await self._websocket(route, request, None)
        try:
            upstream = await self._send(route, request)
        except UpstreamFailed as exc:
            return error(exc.status, str(exc))
        async with upstream:
            answer = web.StreamResponse(status=upstream.status,
                                        headers=response_headers(upstream.headers))
            await answer.prepare(request)
            try:
                await copy(upstream, answer)
            except UpstreamFailed:
                return cut(request, answer)
            await answer.write_eof()
        return answer

    def _take_failed(self, taken: Stored, exc: StoreError, *, forwarded: bool = False
                     ) -> web.Response:
        """503: the request's credit could not be taken (nothing was); `forwarded`: a safe
        request sent upstream before the take was durable, whose answer is dropped."""
        log.warning("taking the credit of channel %s failed: %s", taken.channel, exc)
        sent = ("sent upstream, its answer dropped" if forwarded else "not forwarded")
        answer = error(503, f"the gateway could not take the request's credit ({exc}): "
                            f"{sent}, not charged; a payment it carried is stored as "
                            "credit: retry later")
        answer.headers[RECEIPT_HEADER] = receipt(taken.ack, 0,
                                                 self.credit.cached(taken.channel),
                                                 taken.frames)
        return answer

    async def _paid(self, route: Route, request: web.Request, paid: Paid,
                    sending: asyncio.Future[aiohttp.ClientResponse] | None = None
                    ) -> web.StreamResponse:
        """Serve a paid request (`sending`: its upstream request, sent already)."""
        if websocket.is_upgrade(request):
            return await self._websocket(route, request, paid)
        try:
            upstream = await (sending if sending is not None else self._send(route, request))
        except UpstreamFailed as exc:
            return await self._charged(error(exc.status, str(exc)), route, request, paid, 0)
        async with upstream:
            if upstream.status >= 500:
                body = await read_some(upstream)
                answer = web.Response(status=upstream.status, body=body,
                                      headers=response_headers(upstream.headers))
                return await self._charged(answer, route, request, paid, 0)
            if route.price.per == "second":
                return await self._metered(route, request, paid, upstream)
            if route.price.per == "byte":
                return await self._per_byte(route, request, paid, upstream)
            return await self._per_request(route, request, paid, upstream)

    async def _per_request(self, route: Route, request: web.Request, paid: Paid,
                           upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        """A small answer read whole, then charged the price (not charged if its body breaks
        off: 502); a larger one charged with its headers, given back if its body breaks off
        (the client sees it cut short)."""
        if small(request, upstream):
            try:
                whole_body = await read_whole(upstream)
            except UpstreamFailed as exc:
                return await self._charged(error(exc.status, str(exc)), route, request, paid,
                                           0)
            whole = web.Response(status=upstream.status, body=whole_body,
                                 headers=response_headers(upstream.headers))
            self._keep(paid, route.price.price, whole, whole_body)
            return await self._charged(whole, route, request, paid, route.price.price)
        answer = web.StreamResponse(status=upstream.status,
                                    headers=response_headers(upstream.headers))
        await self._charged(answer, route, request, paid, route.price.price)
        await answer.prepare(request)
        try:
            body = await copy(upstream, answer, MAX_ANSWER if paid.key else 0)
        except UpstreamFailed as exc:
            await self.credit.give_back(paid.stored.channel, route.price.price)
            access.info("refunded %d sat to channel %s: %s %s broke off (%s)",
                        route.price.price, paid.stored.channel, request.method, request.path,
                        exc)
            return cut(request, answer)
        await answer.write_eof()
        self._keep(paid, route.price.price, answer, body)
        return answer

    async def _per_byte(self, route: Route, request: web.Request, paid: Paid,
                        upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        """The body read whole (at most what the held credit pays for), then charged; one of
        unknown length (chunked, SSE) is a metered stream."""
        if upstream.content_length is None or metered.is_sse(upstream):
            return await self._metered(route, request, paid, upstream)
        limit = route.price.units_for(paid.held)
        length = upstream.content_length
        if length is not None and length > limit:
            return await self._too_large(route, request, paid, length)
        body = bytearray()
        try:
            while chunk := await read_chunk(upstream):
                body += chunk
                if len(body) > limit:
                    return await self._too_large(route, request, paid, None)
        except UpstreamFailed as exc:
            return await self._charged(error(exc.status, str(exc)), route, request, paid, 0)
        answer = web.Response(status=upstream.status, body=bytes(body),
                              headers=response_headers(upstream.headers))
        cost = route.price.cost(len(body))
        self._keep(paid, cost, answer, bytes(body))
        return await self._charged(answer, route, request, paid, cost)

    async def _metered(self, route: Route, request: web.Request, paid: Paid,
                       upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        """Paid as it is sent, or as it streams (metered.py); charged at its end (the
        receipt, sent with the headers, says 0 so far: the next one shows the credit left)."""
        channel = paid.stored.channel
        meter = metered.Meter(route, self.credit, channel, paid.held, self.clock)
        paid.settled = True  # the meter accounts for what it held
        answer = web.StreamResponse(status=upstream.status,
                                    headers=response_headers(upstream.headers))
        answer.headers[RECEIPT_HEADER] = await self._receipt(paid.stored, 0)
        whole, why = False, "the client went away"
        try:
            await answer.prepare(request)
            whole = await metered.stream(answer, upstream, meter,
                                         self.offer(request, route).to_json(), read_chunk)
            why = "complete" if whole else "the client did not pay in time"
        except UpstreamFailed as exc:
            why = str(exc)
        finally:
            cost = await meter.settle()
            self._keep(paid, cost, answer, None)  # a stream is not answered again
            access.info("charged %d sat (paid %d, credit %d) for %s %s -> %d via %s, channel "
                        "%s: a stream of %d bytes, %s", cost, paid.stored.amount,
                        await self.credit.of(channel), request.method, request.path,
                        answer.status,
                        route.path, channel, meter.sent, why)
        if not whole:
            return cut(request, answer)
        await answer.write_eof()
        return answer

    async def _websocket(self, route: Route, request: web.Request, paid: Paid | None
                         ) -> web.StreamResponse:
        """A WebSocket carried to the upstream (websocket.py): per request charged as it
        opens, per byte or second metered as the upstream's messages go (None: free)."""
        headers = dict(request_headers(request.headers, request.remote, request.scheme,
                                       self.proxies.trusts_host(request.remote or "")))
        protocols = [p.strip() for p in headers.pop("Sec-WebSocket-Protocol", "").split(",")
                     if p.strip()]
        url = websocket.ws_url(route.upstream_url(request.path,
                                                  request.rel_url.raw_query_string))
        try:
            upstream = await asyncio.wait_for(self.upstreams.http.ws_connect(
                url, headers=websocket.handshake_headers(headers), protocols=protocols),
                route.timeout)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            failed = error(502, f"the upstream of {route.path} did not open the WebSocket: "
                                f"{exc}; not charged")
            return failed if paid is None else await self._charged(failed, route, request,
                                                                   paid, 0)
        client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol
                                       else ())
        meter = None
        if paid is not None and route.price.per == "request":
            await self._charged(client, route, request, paid, route.price.price)
        elif paid is not None:
            meter = metered.Meter(route, self.credit, paid.stored.channel, paid.held,
                                  self.clock)
            paid.settled = True  # the meter accounts for what it held
            client.headers[RECEIPT_HEADER] = await self._receipt(paid.stored, 0)
        why = "the client went away"
        try:
            await client.prepare(request)
            why = await websocket.carry(client, upstream, meter)
        finally:
            if not upstream.closed:
                await upstream.close()
            if meter is not None:
                cost = await meter.settle()
                access.info("charged %d sat (paid %d, credit %d) for a WebSocket on %s via "
                            "%s, channel %s: %d bytes from the upstream, %s", cost,
                            paid.stored.amount if paid else 0,
                            await self.credit.of(meter.channel), request.path,
                            route.path, meter.channel, meter.sent, why)
        return client

    async def _too_large(self, route: Route, request: web.Request, paid: Paid,
                   length: int | None) -> web.StreamResponse:
        size = f"{length} bytes" if length is not None else "larger"
        cost = f", costs {route.price.cost(length)} sat" if length is not None else ""
        answer = self._payment_required(
            request, route, f"the answer is {size}{cost}: more than the {paid.held} sat of "
            f"credit held pay for ({route.price.units_for(paid.held)} bytes); pay more")
        return await self._charged(answer, route, request, paid, 0)

    async def _charged(self, answer: web.StreamResponse, route: Route, request: web.Request,
                 paid: Paid, cost: int) -> web.StreamResponse:
        """Charge `cost` of what `paid` held (the rest back to the credit); the receipt on
        `answer`; one access-log line."""
        channel = paid.stored.channel
        assert not paid.settled, "a request is charged once"
        paid.settled = True
        await self.credit.give_back(channel, paid.held - cost)
        left = await self.credit.known(channel)  # for the receipt and the log
        answer.headers[RECEIPT_HEADER] = receipt(paid.stored.ack, cost, left,
                                                 paid.stored.frames)
        access.info("charged %d sat (paid %d, credit %d) for %s %s -> %d via %s, channel %s",
                    cost, paid.stored.amount, left, request.method,
                    request.path, answer.status, route.path, channel)
        return answer

    async def _receipt(self, stored: Stored, cost: int) -> str:
        return receipt(stored.ack, cost, await self.credit.known(stored.channel),
                       stored.frames)

    async def _lacking(self, channel: str, needed: int) -> int:
        """What a payment must add for a request that needs `needed` sat of credit."""
        return max(needed - await self.credit.known(channel), self.policy.min_increment)

    async def _send(self, route: Route, request: web.Request) -> aiohttp.ClientResponse:
        return await self.upstreams.send(route, request,
                                         self.proxies.trusts_host(request.remote or ""))

    def _payment_required(self, request: web.Request, route: Route, why: str) -> web.Response:
        offer = self.offer(request, route)
        body = json.loads(offer.to_json()) | {"error": why}
        return web.json_response(body, status=402, headers={
            CHALLENGE_HEADER: challenge(offer, request.host), "Cache-Control": "no-store"})


def _abandon(sending: asyncio.Future[aiohttp.ClientResponse]) -> None:
    """An upstream request whose answer will not be used: cancelled, or its answer
    released."""
    if not sending.done():
        sending.cancel()
    elif not sending.cancelled() and sending.exception() is None:
        sending.result().release()
