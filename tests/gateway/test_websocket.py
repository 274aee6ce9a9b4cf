"""Proxied WebSockets: the upstream's messages paid per byte out of the credit window. When
it is spent the gateway stops reading the upstream and the connection waits (not dropped)
until the client tops up; then every message comes, in order. Not topped up in time: closed
with 4402. Per request: the price once, as it opens. Free: carried. Unpaid: 402, the upstream
never dialled. Pauses are observed through the gateway's state, not timers."""

from __future__ import annotations

import asyncio

import aiohttp

from bitcoind_paychan.gateway.websocket import PAYMENT_CLOSE
from bitcoind_paychan.transport.paidhttp import read_receipt
from regtest.waiting import until
from tests.gateway.conftest import OPEN, PRICE, Bench, bench
from tests.gateway.test_metered import credit_after
from tests.service.conftest import MemSides

FRAME = 10_000  # bytes of each upstream message: 1,000 sat on /meter (1 sat per 10 bytes)


async def connect(b: Bench, path: str, amount: int
                  ) -> tuple[aiohttp.ClientWebSocketResponse, str, int]:
    """A paid WebSocket through the gateway, its receipt settled: (it, channel, charged)."""
    payment = await b.payer.pay(await b.offer(path), amount)
    socket = await b.http.ws_connect(b.url + path, headers=payment.header)
    handshake = socket._response  # aiohttp keeps the 101 answer there: its receipt
    receipt = await payment.settle(handshake.headers)
    assert receipt is not None
    return socket, payment.channel.contract_txid, receipt.charged


async def settled(b: Bench, channel: str) -> None:
    """Wait until the gateway charged the closed connection (what it drew is spent till
    then: the channel's credit is 0)."""
    for _ in range(3_000):  # bounds a wait that would hang, decides nothing
        if await b.gateway.credit.of(channel):
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the gateway did not charge the closed WebSocket")


def test_a_websocket_pauses_when_the_credit_is_spent_and_goes_on_after_a_top_up(
        sides: MemSides) -> None:
    async def main() -> None:
        async with bench(sides) as b:
            socket, channel, charged = await connect(b, "/meter/api/ws", 5_000)
            assert charged == 0  # metered: charged at the end
            held = OPEN + 5_000  # 60,000 bytes: 6 messages
            for n in range(8):
                b.upstream.frames.put_nowait(bytes([n]) * FRAME)
            got = [(await socket.receive_bytes()) for _ in range(6)]
            await until(lambda: b.gateway.credit.waiting(channel), what="the pause")
            assert await b.gateway.credit.of(channel) == 0
            await socket.send_str("hello")  # the other way is not metered, nor paused
            await until(lambda: b.upstream.heard == ["hello"], what="the client's message")
            await b.payer.top_up(await b.offer("/meter/x"), 2_500)  # 2 more messages, the echo
            got += [(await socket.receive_bytes()) for _ in range(2)]
            assert got == [bytes([n]) * FRAME for n in range(8)]  # in order, none dropped
            assert await socket.receive_str() == "echo hello"  # queued behind them upstream
            b.upstream.frames.put_nowait(None)  # the upstream closes: so does the client's
            closing = await socket.receive()
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            await socket.close()
            # Charged 8,001 (80,010 bytes) when it ended; 499 of the top-up is left.
            await settled(b, channel)
            assert await credit_after(b) == held + 2_500 - 8_001
    asyncio.run(main())


def test_a_websocket_not_topped_up_in_time_is_closed_with_4402(sides: MemSides) -> None:
    async def main() -> None:
        async with bench(sides) as b:
            socket, _, _ = await connect(b, "/short/api/ws", 5_000)  # timeout 0.3 s
            for n in range(7):
                b.upstream.frames.put_nowait(bytes([n]) * FRAME)
            for _ in range(6):
                await socket.receive_bytes()
            closing = await socket.receive()
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == PAYMENT_CLOSE
            assert "payment required" in str(closing.extra)
            await socket.close()
    asyncio.run(main())


def test_a_websocket_per_request_pays_once_free_is_carried_and_unpaid_is_refused(
        sides: MemSides) -> None:
    async def main() -> None:
        async with bench(sides) as b:
            socket, _, charged = await connect(b, "/api/ws", PRICE)
            assert charged == PRICE
            for n in range(3):
                b.upstream.frames.put_nowait(b"%d" % n * FRAME)
            assert [await socket.receive_bytes() for _ in range(3)] == [
                b"%d" % n * FRAME for n in range(3)]
            b.upstream.frames.put_nowait(None)  # this upstream ends (the next is another)
            assert (await socket.receive()).type == aiohttp.WSMsgType.CLOSE
            await socket.close()
            dialled = len(b.upstream.seen)
            unpaid = await b.http.get(b.url + "/api/ws", headers={
                "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
            assert unpaid.status == 402 and "WWW-Authenticate" in unpaid.headers
            assert len(b.upstream.seen) == dialled  # never forwarded
            free = await b.http.ws_connect(b.url + "/gratis/api/ws")
            b.upstream.frames.put_nowait(b"gratis")
            assert await free.receive_bytes() == b"gratis"
            assert "Payment-Receipt" not in free._response.headers
            await free.close()
            _, _, headers, _ = await b.paid("/api/next", 1)
            assert read_receipt(headers["Payment-Receipt"]).charged == PRICE
    asyncio.run(main())
