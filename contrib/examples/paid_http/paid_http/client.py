"""The client: pays for each request of a paid API through a channel it opens at the API's
channel endpoint (or resumes: the channel is stored, its peer being that endpoint).

    async with client_manager(wallet, store) as client:
        response = await client.get("http://127.0.0.1:8402/api/hello")
        print(response.status, response.json(), response.paid)

A request answered 402 is sent again with a payment of the offer's price; the server's ack
(in its answer) completes the payment. Requests through one channel are paid one after
another (a payment's amount is the difference to the one before). A payment the server did
not acknowledge (its session ended: a restart, say) stays stored here; the channel is resumed,
which re-sends it as the proof that it is ours, and the request is sent again with a new
payment: such a loss costs at most one price.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.node.ports import Node, NodePorts
from bitcoind_paychan.service.client import Channel, ClientManager
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.transport import CarriedStream
from bitcoind_paychan.transport.paidhttp import (
    PAYMENT_HEADER,
    RECEIPT_HEADER,
    HttpLink,
    Offer,
    credential,
    read_receipt,
)
from bitcoind_paychan.transport.paidhttp.link import http_dialer

log = logging.getLogger(__name__)
DEFAULT_VALUE = 1_000_000  # sat locked in a new channel (at least the server's minimum)


@dataclass(frozen=True)
class PaidResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    paid: int  # sat this request paid (0: none)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class PendingPayment:
    """A payment signed and stored, to travel in one request's header (`header`); `settle`
    with that request's answer."""

    channel: Channel
    link: HttpLink
    amount: int
    frame: bytes  # the UPDATE_PAYMENT
    paying: asyncio.Future[bytes]  # the manager's pay(), done once the ack is handed in

    @property
    def header(self) -> dict[str, str]:
        assert self.link.session is not None, "a channel is open only in a session"
        return {PAYMENT_HEADER: credential(self.link.session, self.frame)}

    async def settle(self, headers: Mapping[str, str]) -> bool:
        """Hand the answer's ack (in its receipt) to the manager (True); without one, hang up
        (False): the payment stays stored, and the next one resumes the channel."""
        found = headers.get(RECEIPT_HEADER)
        if found is None:
            await self.abandon()
            return False
        self.link.stream.feed(read_receipt(found).ack)
        await self.paying
        return True

    async def abandon(self) -> None:
        self.paying.cancel()
        with contextlib.suppress(BaseException):
            await self.paying
        await self.channel.disconnect()


class PaidClient:
    """Pays for requests to paid APIs, through one channel per channel endpoint."""

    def __init__(self, manager: ClientManager, http: aiohttp.ClientSession,
                 value: int = DEFAULT_VALUE) -> None:
        self.manager = manager
        self.http = http
        self.value = value
        self.paid = 0  # sat paid for requests through this object
        self._offers: dict[URL, Offer] = {}  # origin → its offer
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, url: str, headers: Mapping[str, str] | None = None) -> PaidResponse:
        return await self.request("GET", url, headers=headers)

    async def request(self, method: str, url: str, *, data: bytes | None = None,
                      headers: Mapping[str, str] | None = None) -> PaidResponse:
        """Send the request; pay for it if its API asks (402 with an offer)."""
        sent = {**(headers or {})}
        offer = self._offers.get(URL(url).origin())
        if offer is None:
            unpaid = await self._send(method, url, data, sent)
            if unpaid.status != 402:
                return unpaid
            offer = self.offered(url, unpaid)
        async with self._locks.setdefault(offer.endpoint, asyncio.Lock()):
            response = await self._paid(method, url, data, sent, offer)
            if response.status == 402 and not response.paid:
                # Not acknowledged (the session ended, or the offer changed): once more,
                # through the resumed channel, at the price the server just said.
                response = await self._paid(method, url, data, sent,
                                            self.offered(url, response))
        return response

    def offered(self, url: str, response: PaidResponse) -> Offer:
        """The offer in a 402, remembered for `url`'s origin."""
        offer = self._offers[URL(url).origin()] = Offer.from_json(response.body.decode())
        return offer

    async def pay(self, offer: Offer, amount: int) -> PendingPayment:
        """Sign and store a payment of `amount` through the channel to `offer`'s endpoint
        (opened or resumed as needed), for the caller to carry."""
        channel = await self._channel(offer)
        stream = channel.stream
        assert isinstance(stream, CarriedStream) and isinstance(stream.link, HttpLink), \
            "the manager dials with http_dialer"
        link = stream.link
        expected = link.expect_payment()
        paying = asyncio.ensure_future(channel.pay(amount))
        await asyncio.wait({expected, paying}, return_when=asyncio.FIRST_COMPLETED)
        if not expected.done():  # pay() failed before sending anything
            expected.cancel()
            await paying
        return PendingPayment(channel, link, amount, expected.result(), paying)

    async def offer(self, url: str) -> Offer:
        """The offer of `url`'s API: remembered, else asked for (an unpaid request)."""
        offer = self._offers.get(URL(url).origin())
        return offer or self.offered(url, await self._send("GET", url, None, {}))

    async def close(self, url: str) -> Transaction:
        """Settle the channel that pays for `url`'s API; returns the settlement."""
        offer = await self.offer(url)
        channel = await self._channel(offer)
        return await channel.close()

    async def _paid(self, method: str, url: str, data: bytes | None,
                    headers: dict[str, str], offer: Offer) -> PaidResponse:
        payment = await self.pay(offer, offer.price)
        response = await self._send(method, url, data, headers | payment.header)
        if not await payment.settle(response.headers):
            log.info("%s answered %s without an ack: the channel will be resumed", url,
                     response.status)  # (settle hung it up: the next lookup resumes it)
            return response
        self.paid += offer.price
        return PaidResponse(response.status, response.headers, response.body, offer.price)

    async def _channel(self, offer: Offer) -> Channel:
        """The channel to `offer`'s endpoint with room for a payment: the manager's lookup
        (live, else the stored one resumed, else a new one); one with less than the price
        left is closed and a new one opened."""
        value = max(self.value, offer.min_channel_value)
        found = await self.manager.lookup(offer.endpoint, value, any_value=True)
        channel = found.channel
        if channel.remaining < offer.price:
            await channel.close()
            channel = await self.manager.open_channel(offer.endpoint, value, new=True)
        return channel

    async def _send(self, method: str, url: str, data: bytes | None,
                    headers: Mapping[str, str]) -> PaidResponse:
        async with self.http.request(method, url, data=data, headers=headers) as response:
            return PaidResponse(response.status, CIMultiDict(response.headers),
                                await response.read(),
                                0)


@contextlib.asynccontextmanager
async def client_manager(wallet: Node | NodePorts, store: ChannelStore, value: int = DEFAULT_VALUE,
                         **options: Any) -> AsyncIterator[PaidClient]:
    """A PaidClient over a ClientManager (`options`: the manager's) that dials channel
    endpoints over HTTP; the manager's autopilot runs until the block ends."""
    async with (aiohttp.ClientSession() as http,
                ClientManager(wallet, store, dial=http_dialer(http), **options) as manager):
        yield PaidClient(manager, http, value)
