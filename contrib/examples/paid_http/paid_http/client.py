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
from bitcoind_paychan.gateway.payer import DEFAULT_VALUE, Payer, PendingPayment
from bitcoind_paychan.node.ports import Node, NodePorts
from bitcoind_paychan.service.client import Channel, ClientManager
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.transport.paidhttp import Offer
from bitcoind_paychan.transport.paidhttp.link import http_dialer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PaidResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    paid: int  # sat this request paid (0: none)

    def json(self) -> Any:
        return json.loads(self.body)


class PaidClient:
    """Pays for requests to paid APIs, through one channel per channel endpoint."""

    def __init__(self, manager: ClientManager, http: aiohttp.ClientSession,
                 value: int = DEFAULT_VALUE) -> None:
        self.manager = manager
        self.payer = Payer(manager, value)
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
        return await self.payer.pay(offer, amount)

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
        if await payment.settle(response.headers) is None:
            log.info("%s answered %s without an ack: the channel will be resumed", url,
                     response.status)  # (settle hung it up: the next lookup resumes it)
            return response
        self.paid += offer.price
        return PaidResponse(response.status, response.headers, response.body, offer.price)

    async def _channel(self, offer: Offer) -> Channel:
        return await self.payer.channel(offer, offer.price)

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
