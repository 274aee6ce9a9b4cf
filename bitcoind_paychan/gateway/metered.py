"""Metered streams: an answer priced per second, or per byte and of unknown length (chunked,
or Server-Sent Events), paid as it is consumed, within a credit window.

The request holds its channel's credit (at least the route's reserve) when it starts; each
part of the answer is paid out of it before it is written, then out of the channel's credit
as it grows. When nothing is left the gateway stops reading the upstream (its connection's
flow control pauses the upstream, nothing is dropped) and waits for the client to top up:
a payment POSTed to the channel endpoint in the same session. An SSE client is told with an
event `payment-required` (its data: the offer, the credit, and the sat the next event needs);
an SSE answer is only ever cut between events. Waiting longer than the route's timeout ends
the stream. At the end the stream is charged what it sent and the rest goes back to credit.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from bitcoind_paychan.errors import UpstreamFailed
from bitcoind_paychan.gateway.credit import Credit
from bitcoind_paychan.gateway.routes import Route

SSE_TYPE = "text/event-stream"
PAYMENT_EVENT = "payment-required"
EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")  # a blank line ends an event
MAX_EVENT = 1 << 20  # bytes an SSE event may take: an upstream's longer one ends the stream
Read = Callable[[aiohttp.ClientResponse], Awaitable[bytes]]


@dataclass
class Meter:
    """One stream's account: sat drawn (held, then taken from the credit), bytes sent, and
    for a price per second the time it has streamed (`clock`'s seconds since it began, less
    the pauses waiting for payment; the second under way is paid at its start)."""

    route: Route
    credit: Credit
    channel: str
    drawn: int
    clock: Callable[[], float] = time.monotonic
    sent: int = 0
    paused: float = 0.0
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    @property
    def timed(self) -> bool:
        return self.route.price.per == "second"

    def used(self, size: int) -> int:
        """Units (bytes, or seconds) used once `size` more bytes are sent."""
        if self.timed:
            return int(self.clock() - self.started - self.paused) + 1
        return self.sent + size

    @property
    def room(self) -> int:
        """Bytes that what was drawn pays for now (per second: any, while the time used is
        paid for)."""
        covered = self.route.price.units_for(self.drawn)
        if self.timed:
            return sys.maxsize if self.used(0) <= covered else 0
        return covered - self.sent

    async def draw(self, size: int) -> None:
        """Take from the credit what sending `size` more bytes lacks (as much as there is)."""
        lacking = self.lacking(size)
        if lacking > 0:
            self.drawn += await self.credit.take(self.channel, lacking)

    async def top_up(self) -> bool:
        """Wait for the channel's credit to grow (a top-up), at most the route's timeout
        (False: none came). The pause is not charged: the upstream was not read."""
        began = self.clock()
        grown = await self.credit.wait(self.channel, self.route.timeout)
        self.paused += self.clock() - began
        return grown

    def lacking(self, size: int) -> int:
        return self.route.price.cost(self.used(size)) - self.drawn

    async def settle(self) -> int:
        """The stream's cost (what it sent, or the time it streamed: never more than it
        drew); the rest of what it drew goes back."""
        if self.timed:
            await self.draw(0)  # the time it streamed since its last part, as far as credit goes
        cost = min(self.route.price.cost(self.used(0) if self.timed else self.sent),
                   self.drawn)
        await self.credit.give_back(self.channel, self.drawn - cost)
        return cost


def is_sse(upstream: aiohttp.ClientResponse) -> bool:
    return upstream.headers.get("Content-Type", "").lower().startswith(SSE_TYPE)


async def stream(answer: web.StreamResponse, upstream: aiohttp.ClientResponse, meter: Meter,
                 offer: str, read: Read) -> bool:
    """Copy `upstream` to the prepared `answer`, each part paid before it is written; False
    if the client did not top up in time (the stream was ended short)."""
    sse = is_sse(upstream)
    pending = b""
    ended = False
    while pending or not ended:
        if not ended and (not pending or (sse and not EVENT_END.search(pending))):
            if len(pending) > MAX_EVENT:
                raise UpstreamFailed(502, f"the upstream sent an event over {MAX_EVENT} bytes")
            chunk = await read(upstream)
            ended = not chunk
            pending += chunk
            continue
        size = _next_part(pending, meter.room, sse, ended)
        if size == 0:
            whole = _first_part(pending, sse)
            await meter.draw(whole)
            if _next_part(pending, meter.room, sse, ended):
                continue
            if sse:
                await answer.write(_payment_event(offer, meter, whole,
                                                  await meter.credit.of(meter.channel)))
            if not await meter.top_up():
                return False
            continue
        await answer.write(pending[:size])
        meter.sent += size
        pending = pending[size:]
    return True


def _next_part(pending: bytes, room: int, sse: bool, ended: bool) -> int:
    """How many bytes of `pending` to write within `room`: all that fits, or for SSE the
    whole events that fit (the rest once the upstream has ended)."""
    if room <= 0 or not pending:
        return 0
    if not sse:
        return min(room, len(pending))
    ends = [end.end() for end in EVENT_END.finditer(pending, 0, min(room, len(pending)))]
    if ends:
        return ends[-1]
    return len(pending) if ended and len(pending) <= room else 0


def _first_part(pending: bytes, sse: bool) -> int:
    """The least that can be written next: the first event for SSE, else everything."""
    end = EVENT_END.search(pending) if sse else None
    return end.end() if end else len(pending)


def _payment_event(offer: str, meter: Meter, size: int, credit: int) -> bytes:
    lacking = meter.lacking(size)
    data = json.loads(offer) | {"error": "the stream's credit is spent: pay to go on",
                                "credit": credit, "needed": lacking}
    return f"event: {PAYMENT_EVENT}\ndata: {json.dumps(data)}\n\n".encode()

