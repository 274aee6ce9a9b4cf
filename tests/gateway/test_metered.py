"""Metered streams: a per-byte answer of unknown length paid as it is consumed. The gateway
sends what the credit pays for, pauses the upstream until the client tops up (SSE clients
are asked with an event), then goes on; nothing is dropped and the stream is charged exactly
what it sent. Pauses are observed through the gateway's state, not timers."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from bitcoind_paychan.gateway.metered import PAYMENT_EVENT
from bitcoind_paychan.transport.paidhttp import read_receipt
from regtest.waiting import until
from tests.gateway.conftest import EVENT_SIZE, OPEN, Bench, Clock, bench
from tests.service.conftest import MemSides


async def open_stream(b: Bench, path: str, amount: int
                      ) -> tuple[aiohttp.ClientResponse, str]:
    """A metered answer, its headers read (its receipt settled); (it, its channel)."""
    offer = await b.offer(path)
    payment = await b.payer.pay(offer, amount)
    response = await b.http.get(b.url + path, headers=payment.header)
    receipt = await payment.settle(response.headers)
    assert response.status == 200 and receipt is not None and receipt.charged == 0
    return response, payment.channel.contract_txid


async def credit_after(b: Bench) -> int:
    """The credit the next request's receipt shows (it pays 1 sat, charged 100)."""
    _, _, headers, _ = await b.paid("/api/next", 1)
    return read_receipt(headers["Payment-Receipt"]).credit + 100 - 1


def test_a_chunked_stream_pauses_when_the_credit_is_spent_and_goes_on_after_a_top_up(
        sides: MemSides) -> None:
    async def main() -> None:
        async with bench(sides) as b:
            response, channel = await open_stream(b, "/meter/api/data?n=80000&chunked=1",
                                                  5_000)
            held = OPEN + 5_000  # 1 sat per 10 bytes: 60,000 bytes
            first = await response.content.readexactly(held * 10)
            await until(lambda: b.gateway.credit.waiting(channel), what="the pause")
            assert await b.gateway.credit.of(channel) == 0
            await b.payer.top_up(await b.offer("/meter/x"), 2_500)
            rest = await response.content.read()
            assert first + rest == b"x" * 80_000  # nothing dropped
            response.release()
            # Charged 8,000 (80,000 bytes); 500 of the top-up is left.
            assert await credit_after(b) == held + 2_500 - 8_000
    asyncio.run(main())


def test_an_sse_client_is_asked_to_pay_between_whole_events(sides: MemSides) -> None:
    async def main() -> None:
        async with bench(sides) as b:
            count = 2_000  # 116,000 bytes: 11,600 sat
            response, _ = await open_stream(b, f"/meter/api/events?n={count}", 5_000)
            held = OPEN + 5_000
            paid_for = held * 10 // EVENT_SIZE  # whole events only
            events: list[bytes] = []
            asked = None
            while len(events) < count:
                event = await response.content.readuntil(b"\n\n")
                if event.startswith(f"event: {PAYMENT_EVENT}\n".encode()):
                    asked = json.loads(event.split(b"data: ", 1)[1])
                    assert len(events) == paid_for
                    await b.payer.top_up(await b.offer("/meter/x"), asked["needed"] + 6_000)
                    continue
                assert len(event) == EVENT_SIZE and event.startswith(
                    b"data: %06d" % len(events))  # whole, in order, none dropped
                events.append(event)
            assert asked is not None and asked["unit"] == "byte" and asked["credit"] == 0
            # The next event's cost, rounded up, less what was drawn.
            assert asked["needed"] == -(-(paid_for + 1) * EVENT_SIZE // 10) - held == 3
            assert await response.content.read() == b""
            response.release()
            assert await credit_after(b) == held + asked["needed"] + 6_000 - 11_600
    asyncio.run(main())


def test_a_stream_not_paid_in_time_ends_short_and_is_charged_what_it_sent(
        sides: MemSides) -> None:
    async def main() -> None:
        async with bench(sides) as b:
            response, channel = await open_stream(b, "/short/api/data?n=80000&chunked=1",
                                                  5_000)
            held = OPEN + 5_000
            assert await response.content.readexactly(held * 10) == b"x" * held * 10
            with pytest.raises(aiohttp.ClientPayloadError):  # cut short once the wait for
                await response.content.read()                # payment is over
            response.release()
            assert not b.gateway.credit.waiting(channel)
            assert await b.gateway.credit.of(channel) == 0  # charged all it held: it sent that much
    asyncio.run(main())


def test_a_stream_priced_per_second_is_paid_for_the_time_it_streams(sides: MemSides) -> None:
    """The gateway's clock moves only when the test moves it: 100 sat a second, the second
    under way paid at its start, the pause waiting for payment not charged."""
    async def main() -> None:
        clock = Clock()
        async with bench(sides, clock=clock) as b:
            response, channel = await open_stream(b, "/live/api/ticks", 1)
            held = OPEN + 1  # 10 s at 100 sat/s
            b.upstream.ticks.put_nowait(b"data: 0\n\n")  # at 0 s: the 1st second
            assert await response.content.readuntil(b"\n\n") == b"data: 0\n\n"
            clock.now += 9.5  # in the 10th second: still paid for
            b.upstream.ticks.put_nowait(b"data: 1\n\n")
            assert await response.content.readuntil(b"\n\n") == b"data: 1\n\n"
            clock.now += 2  # the 12th second: 200 sat lacking, none in credit
            b.upstream.ticks.put_nowait(b"data: 2\n\n")
            asked = await response.content.readuntil(b"\n\n")
            assert asked.startswith(f"event: {PAYMENT_EVENT}\n".encode())
            data = json.loads(asked.split(b"data: ", 1)[1])
            assert (data["needed"], data["unit"]) == (12 * 100 - held, "second")
            await until(lambda: b.gateway.credit.waiting(channel), what="the pause")
            clock.now += 60  # a minute waiting for payment: not charged
            await b.payer.top_up(await b.offer("/live/x"), 1_000)
            assert await response.content.readuntil(b"\n\n") == b"data: 2\n\n"
            clock.now += 1  # ends in the 13th second of streaming
            b.upstream.ticks.put_nowait(None)
            assert await response.content.read() == b""
            response.release()
            assert await b.gateway.credit.of(channel) == held + 1_000 - 13 * 100
    asyncio.run(main())
