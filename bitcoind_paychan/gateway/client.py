"""The paying client for httpx: an auth flow that pays a `paychan` 402 through a channel,
so existing httpx code pays without changes.

    async with paying(wallet, store, max_request=500, max_total=100_000) as auth:
        async with httpx.AsyncClient(auth=auth) as http:
            response = await http.get("http://api.example:8402/api/hello")

    with paying_in_thread(wallet, store) as auth:      # for a synchronous httpx.Client
        httpx.get("http://api.example:8402/api/hello", auth=auth)

A request answered 402 with a `Payment ... method="paychan"` challenge is sent again carrying
a payment through the channel to the offer's endpoint (opened on first use, or the stored one
resumed); its answer's receipt completes the payment. The offer is remembered per URL (without
its query), so later requests are paid at once. Each payment adds what the request needs
beyond the credit the last receipt showed (at least `prepay` sat, as the caps allow: credit
paid ahead); a request that credit covers carries no payment, only the session and a request
number, and spends it. Caps (PriceRefused, nothing signed): an offer whose
request costs more than `max_request` sat, and payments over `max_total` sat in all.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Coroutine,
    Generator,
    Iterator,
)
from typing import Any, TypeVar

import aiohttp
import httpx

from bitcoind_paychan.errors import PaidHttpError, PriceRefused
from bitcoind_paychan.gateway.payer import DEFAULT_VALUE, Payer, PendingPayment, SpentCredit
from bitcoind_paychan.node.ports import Node, NodePorts
from bitcoind_paychan.service.client import ClientManager
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.transport import CarriedStream
from bitcoind_paychan.transport.paidhttp.link import HttpLink, http_dialer
from bitcoind_paychan.transport.paidhttp.wire import (
    CHALLENGE_HEADER,
    PAYMENT_HEADER,
    Offer,
    Receipt,
    read_challenge,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class PaychanAuth(httpx.Auth):
    """Pays `paychan` 402s through `payer` (its manager runs on `loop`: the running one if
    None). `max_request`: the most one request may cost (its price, or reserve); None: no
    cap. `prepay`: the least sat a payment adds (0: what the request lacks), so the requests
    after it spend credit without a payment of their own. `paid`: sat paid through this
    object; `receipts`: the last receipt per channel."""

    requires_response_body = False  # the offer is in the challenge: streams stay streams

    def __init__(self, payer: Payer, *, max_request: int | None = None, prepay: int = 0,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.payer = payer
        self.max_request = max_request
        self.prepay = prepay
        self.loop = loop
        self.offers: dict[str, Offer] = {}  # URL without its query → its offer
        self.receipts: dict[str, Receipt] = {}  # channel → the last receipt through it
        self._locks: dict[str, asyncio.Lock] = {}  # one payment at a time per channel

    @property
    def paid(self) -> int:
        return self.payer.paid

    # -- httpx's flows --------------------------------------------------------------------

    async def async_auth_flow(self, request: httpx.Request
                              ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        key = str(request.url.copy_with(query=None, fragment=None))
        offer = self.offers.get(key)
        if offer is None:
            response = yield request
            offer = self._offer_in(response)
            if offer is None:
                return
            self.offers[key] = offer
        for attempt in range(2):
            payment = await self._run(self._pay(offer))
            request.headers[PAYMENT_HEADER] = payment.header[PAYMENT_HEADER]
            try:
                response = yield request
            except BaseException:  # not answered: the payment is not acknowledged
                await self._run(self._abandon(offer, payment))
                raise
            await self._run(self._settle(offer, payment, response))
            again = self._offer_in(response) if response.status_code == 402 else None
            if again is None or attempt:
                return
            self.offers[key] = offer = again  # the price changed, or the session was lost

    def sync_auth_flow(self, request: httpx.Request
                       ) -> Generator[httpx.Request, httpx.Response, None]:
        """The async flow, its steps run on the manager's loop (paying_in_thread's)."""
        if self.loop is None:
            raise RuntimeError("a synchronous httpx client pays through paying_in_thread()")
        flow = self.async_auth_flow(request)
        step = _on(self.loop, anext(flow))
        while True:
            try:
                answer = yield step
            except BaseException as exc:  # not sent, or httpx closes the flow
                with contextlib.suppress(BaseException):
                    _on(self.loop, flow.athrow(exc))
                raise
            try:
                step = _on(self.loop, flow.asend(answer))
            except StopAsyncIteration:
                return

    @staticmethod
    def _offer_in(response: httpx.Response) -> Offer | None:
        """The offer of a 402 with a paychan challenge; None for any other answer."""
        if response.status_code != 402 or CHALLENGE_HEADER not in response.headers:
            return None
        try:
            return read_challenge(response.headers[CHALLENGE_HEADER])
        except PaidHttpError as exc:
            log.info("%s: a 402 this client cannot pay: %s", response.url, exc)
            return None

    def amount(self, offer: Offer, channel: str = "", opened: int | None = None) -> int:
        """What a request on `offer` must add to the credit `channel` is known to hold: its
        last receipt's, else what the endpoint said as it opened or resumed (`opened`), else
        none. 0: that credit covers it."""
        if self.max_request is not None and offer.needed > self.max_request:
            raise PriceRefused(f"{offer.endpoint} asks {offer.needed} sat for a request "
                               f"({offer.price} sat per {offer.quantity} {offer.unit}), over "
                               f"the cap of {self.max_request} sat per request (max_request): "
                               "refused, nothing paid")
        known = self.receipts.get(channel)
        credit = known.credit if known is not None else opened or 0
        if credit >= offer.needed:
            return 0
        return max(offer.needed - credit, offer.min_increment, 1)

    async def _pay(self, offer: Offer) -> PendingPayment | SpentCredit:
        self.amount(offer)  # over the cap: refused before a channel is opened
        lock = self._locks.setdefault(offer.endpoint, asyncio.Lock())
        await lock.acquire()
        try:
            channel = await self.payer.channel(offer)  # opened or resumed
            stream = channel.stream
            link = stream.link if isinstance(stream, CarriedStream) else None
            opened = link.credit if isinstance(link, HttpLink) else None
            amount = self.amount(offer, channel.channel_id, opened)
            if not amount:
                return await self.payer.spend(offer)
            return await self.payer.pay(offer, amount, ahead=self.prepay)
        except BaseException:
            lock.release()
            raise

    async def _settle(self, offer: Offer, payment: PendingPayment | SpentCredit,
                      response: httpx.Response) -> None:
        try:
            receipt = await payment.settle(response.headers)
        finally:
            self._locks[offer.endpoint].release()
        channel = payment.channel.channel_id
        if receipt is None:
            self.receipts.pop(channel, None)  # resumed next time: the endpoint says it
            log.info("%s answered %s without a receipt: the channel will be resumed",
                     response.url, response.status_code)
        else:
            self.receipts[channel] = receipt

    async def _abandon(self, offer: Offer, payment: PendingPayment | SpentCredit) -> None:
        try:
            await payment.abandon()
        finally:
            self.receipts.pop(payment.channel.channel_id, None)
            self._locks[offer.endpoint].release()

    async def top_up(self, url: str, amount: int) -> None:
        """Pay `amount` sat more into the channel that pays for `url` (its offer known): a
        metered stream waiting for credit goes on."""
        offer = self.offers.get(str(httpx.URL(url).copy_with(query=None, fragment=None)))
        if offer is None:
            raise PaidHttpError(f"no offer known for {url}: request it first")
        await self._run(self._top_up(offer, amount))

    async def _top_up(self, offer: Offer, amount: int) -> None:
        async with self._locks.setdefault(offer.endpoint, asyncio.Lock()):
            await self.payer.top_up(offer, amount)

    async def _run(self, step: Coroutine[Any, Any, T]) -> T:
        """`step` on the manager's loop."""
        if self.loop is None or self.loop is asyncio.get_running_loop():
            return await step
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(step, self.loop))


def _on(loop: asyncio.AbstractEventLoop, step: Awaitable[T]) -> T:
    """`step` run on `loop` (another thread's), waited for here."""
    async def run() -> T:
        return await step
    return asyncio.run_coroutine_threadsafe(run(), loop).result()


@contextlib.asynccontextmanager
async def paying(wallet: Node | NodePorts, store: ChannelStore, value: int = DEFAULT_VALUE,
                 *, max_request: int | None = None, max_total: int | None = None,
                 prepay: int = 0, **options: Any) -> AsyncIterator[PaychanAuth]:
    """A PaychanAuth over a ClientManager of `wallet` and `store` (`options`: the manager's)
    that opens channels of `value` sat at the gateways' endpoints; the manager (and its
    autopilot: refunds, settlement before expiry) runs until the block ends."""
    async with (aiohttp.ClientSession() as http,
                ClientManager(wallet, store, dial=http_dialer(http), **options) as manager):
        yield PaychanAuth(Payer(manager, value, max_total=max_total), max_request=max_request,
                          prepay=prepay, loop=asyncio.get_running_loop())


@contextlib.contextmanager
def paying_in_thread(wallet: Node | NodePorts, store: ChannelStore,
                     value: int = DEFAULT_VALUE, **options: Any) -> Iterator[PaychanAuth]:
    """`paying` for synchronous httpx code: the manager runs on an event loop in a thread of
    its own until the block ends."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="paychan-client", daemon=True)
    thread.start()
    opened: concurrent.futures.Future[PaychanAuth] = concurrent.futures.Future()
    done = threading.Event()

    async def hold() -> None:
        try:
            async with paying(wallet, store, value, **options) as auth:
                opened.set_result(auth)
                await asyncio.to_thread(done.wait)
        except BaseException as exc:
            if not opened.done():
                opened.set_exception(exc)
            raise

    held = asyncio.run_coroutine_threadsafe(hold(), loop)
    try:
        yield opened.result()
    finally:
        done.set()
        with contextlib.suppress(Exception):
            held.result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
