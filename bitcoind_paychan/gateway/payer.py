"""The paying side's core: a payment signed and stored through the channel to an offer's
endpoint, carried in one request's credential, completed by its answer's receipt.

    payer = Payer(manager)          # a ClientManager that dials with link.http_dialer
    payment = await payer.pay(offer, offer.needed)
    response = await http.get(url, headers=payment.header)
    receipt = await payment.settle(response.headers)   # None: not acknowledged

A request the channel's credit covers (its last receipt says so) need carry no payment:
`await payer.spend(offer)` (a SpentCredit, the same three steps, nothing signed or stored).
`pay(..., ahead=N)` pays at least N sat (as the caps allow), credit for the next requests.

A payment the service did not acknowledge (its session ended: a restart, say) stays stored
on this side; the next lookup resumes the channel, which re-sends it as the proof that it is
ours, and the request is paid again: such a loss costs at most one payment.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from bitcoind_paychan.errors import ChannelFailed, PaidHttpError, PriceRefused
from bitcoind_paychan.service.client import Channel, ClientManager
from bitcoind_paychan.transport import CarriedStream
from bitcoind_paychan.transport.paidhttp.link import HttpLink
from bitcoind_paychan.transport.paidhttp.wire import (
    PAYMENT_HEADER,
    RECEIPT_HEADER,
    Offer,
    Receipt,
    credential,
    read_receipt,
)

DEFAULT_VALUE = 1_000_000  # sat locked in a new channel (at least the service's minimum)


@dataclass
class PendingPayment:
    """A payment signed and stored, to travel in one request's header (`header`); `settle`
    with that request's answer."""

    channel: Channel
    link: HttpLink
    amount: int
    frame: bytes  # the UPDATE_PAYMENT
    paying: asyncio.Future[bytes]  # the manager's pay(), done once the ack is handed in
    receipt: Receipt | None = field(default=None)
    token: object | None = None  # its hold of the link's `keeping`

    @property
    def header(self) -> dict[str, str]:
        assert self.link.session is not None, "a channel is open only in a session"
        return {PAYMENT_HEADER: credential(self.link.session, self.frame)}

    async def settle(self, headers: Mapping[str, str]) -> Receipt | None:
        """Hand the answer's ack (in its receipt, with what else the server sent, in order)
        to the manager: the receipt; without one, or a receipt that does not read, hang up
        (None, or PaidHttpError): the payment stays stored, and the next one resumes the
        channel."""
        found = headers.get(RECEIPT_HEADER)
        if found is None:
            await self.abandon()
            return None
        try:
            self.receipt = read_receipt(found)
        except PaidHttpError:
            await self.abandon()
            raise
        for frame in self.receipt.answer:
            self.link.stream.feed(frame)
        self.link.answered(self.token)  # what the manager sent after it may go now
        await self.paying
        return self.receipt

    async def abandon(self) -> None:
        self.paying.cancel()
        with contextlib.suppress(BaseException):
            await self.paying
        await self.channel.disconnect()


@dataclass
class SpentCredit:
    """A request that spends the credit its channel holds (paid ahead): its credential
    carries the session and a new request number, no payment; `settle` with its answer."""

    channel: Channel
    link: HttpLink
    seq: int
    amount: int = 0  # sat it pays: none
    receipt: Receipt | None = field(default=None)

    @property
    def header(self) -> dict[str, str]:
        assert self.link.session is not None, "a channel is open only in a session"
        return {PAYMENT_HEADER: credential(self.link.session, None, self.seq)}

    async def settle(self, headers: Mapping[str, str]) -> Receipt | None:
        """The answer's receipt; without one (the session is gone: a restart, say), hang up
        (None): the next request resumes the channel."""
        found = headers.get(RECEIPT_HEADER)
        if found is None:
            await self.abandon()
            return None
        self.receipt = read_receipt(found)
        return self.receipt

    async def abandon(self) -> None:
        await self.channel.disconnect()


class Payer:
    """Pays through one channel per channel endpoint (`manager`'s: live, resumed or new),
    locking `value` sat in each new one (at least the offer's minimum). Caps: no payment over
    `max_payment` sat, nor over `max_total` sat in all through this payer, opening payments
    included (None: no cap); beyond them PriceRefused, before anything is signed."""

    def __init__(self, manager: ClientManager, value: int = DEFAULT_VALUE, *,
                 max_payment: int | None = None, max_total: int | None = None) -> None:
        self.manager = manager
        self.value = value
        self.max_payment = max_payment
        self.max_total = max_total
        self.paid = 0  # sat signed through this payer
        self._last: dict[str, Channel] = {}  # endpoint → the channel found last

    def check(self, amount: int, what: str = "a payment", *, opening: bool = False) -> None:
        """PriceRefused if paying `amount` would break a cap (an opening payment: only
        `max_total`)."""
        if not opening and self.max_payment is not None and amount > self.max_payment:
            raise PriceRefused(f"{what} of {amount} sat is over the cap of {self.max_payment} "
                               "sat per payment (max_payment): refused, nothing paid")
        if self.max_total is not None and self.paid + amount > self.max_total:
            raise PriceRefused(f"{what} of {amount} sat would bring the total paid to "
                               f"{self.paid + amount} sat, over the cap of {self.max_total} "
                               "(max_total): refused, nothing paid")

    async def pay(self, offer: Offer, amount: int, *, ahead: int = 0) -> PendingPayment:
        """Sign and store a payment of `amount` through the channel to `offer`'s endpoint
        (opened or resumed as needed), for the caller to carry; PriceRefused over a cap. With
        `ahead`, the payment is raised toward `ahead` sat as far as the caps and the channel
        allow: credit paid ahead, so the next requests need carry no payment (`spend`)."""
        self.check(amount)
        channel = await self.channel(offer, amount)
        self.check(amount)  # again: with a new channel's opening payment
        amount = self._raised(amount, ahead, channel.remaining)
        self.paid += amount
        link = _link_of(channel)
        token = await link.keep()  # one payment kept at a time: released once answered
        try:
            expected = link.expect_payment()
            paying = asyncio.ensure_future(channel.pay(amount))
            try:
                await asyncio.wait({expected, paying}, return_when=asyncio.FIRST_COMPLETED)
            except BaseException:  # cancelled: the payment is carried by no request
                await _uncarried(channel, expected, paying)
                raise
            if not expected.done() or expected.cancelled():  # pay() failed before sending
                expected.cancel()  # anything, or the session ended before the payment's turn
                await paying  # raises why (ChannelFailed: the connection ended)
                raise ChannelFailed(f"the session with {offer.endpoint} ended before the "
                                    "payment could be sent; it stays stored: the next one "
                                    "resumes the channel")
        except BaseException:
            link.kept_done(token)
            raise
        return PendingPayment(channel, link, amount, expected.result(), paying, token=token)

    def _raised(self, amount: int, ahead: int, remaining: int) -> int:
        """`amount` raised toward `ahead`, within the caps and the channel's `remaining`."""
        most = min(ahead, remaining)
        if self.max_payment is not None:
            most = min(most, self.max_payment)
        if self.max_total is not None:
            most = min(most, self.max_total - self.paid)
        return max(amount, most)

    async def spend(self, offer: Offer) -> SpentCredit:
        """A request that spends the credit of the channel to `offer`'s endpoint (live or
        resumed), carrying no payment; the caller knows the credit covers it (a receipt)."""
        channel = await self.channel(offer)
        stream = channel.stream
        assert isinstance(stream, CarriedStream) and isinstance(stream.link, HttpLink), \
            "the manager dials with http_dialer"
        return SpentCredit(channel, stream.link, stream.link.next_seq())

    async def top_up(self, offer: Offer, amount: int) -> None:
        """Pay `amount` outside a request: POSTed to the channel endpoint in the channel's
        session, it adds to the channel's credit there (a metered stream waiting for it goes
        on). Returns once the service acknowledged it."""
        self.check(amount, "a top-up")
        channel = await self.channel(offer, amount)
        self.check(amount, "a top-up")
        self.paid += amount
        link = _link_of(channel)
        token = await link.keep()  # not taken for a request's kept payment
        try:
            await channel.pay(amount)
        finally:
            link.kept_done(token)

    async def channel(self, offer: Offer, amount: int = 0) -> Channel:
        """The channel to `offer`'s endpoint with room for `amount`: the manager's lookup
        (live, else the stored one resumed, else a new one); one with less left is closed and
        a new one opened. A new channel's opening payment counts toward `max_total`."""
        last = self._last.get(offer.endpoint)
        if last is not None and last.connected and last.remaining >= max(amount, 1):
            return last  # still live: what the lookup would find first
        value = max(self.value, offer.min_channel_value)
        if not self.manager.has_payable(offer.endpoint):
            self._opening(offer)
        found = await self.manager.lookup(offer.endpoint, value, any_value=True)
        channel = found.channel
        if channel.remaining < amount:
            self._opening(offer)
            await channel.close()
            channel = await self.manager.open_channel(offer.endpoint, value, new=True)
        self._last[offer.endpoint] = channel
        return channel

    def _opening(self, offer: Offer) -> None:
        self.check(offer.open_payment, "a new channel's opening payment", opening=True)
        self.paid += offer.open_payment


def _link_of(channel: Channel) -> HttpLink:
    stream = channel.stream
    assert isinstance(stream, CarriedStream) and isinstance(stream.link, HttpLink), \
        "the manager dials with http_dialer"
    return stream.link


async def _uncarried(channel: Channel, expected: asyncio.Future[bytes],
                     paying: asyncio.Future[bytes]) -> None:
    """`Payer.pay` was cancelled: a payment not yet kept goes as credit, POSTed like a
    top-up; one kept already is carried by no request, so the session ends (the payment
    stays stored: the next one resumes the channel, which re-sends it)."""
    paying.add_done_callback(lambda done: done.cancelled() or done.exception())
    if not expected.done():
        expected.cancel()
    elif not expected.cancelled():
        await channel.disconnect()
