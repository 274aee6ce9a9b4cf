"""The paid API refuses what does not pay, on the in-process chain: each refusal is a clear
402/400, nothing is served and nothing is stored."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable

import aiohttp

from bitcoind_paychan.channel.kinds.registry import VERSIONS
from bitcoind_paychan.transport import decode, encode
from bitcoind_paychan.transport.paidhttp import (
    CHALLENGE_HEADER,
    CLOSED_HEADER,
    FRAMES_TYPE,
    PAYMENT_HEADER,
    SESSION_HEADER,
    Offer,
    credential,
    join_frames,
)
from tests.examples.paid_http.conftest import PRICE, Api, paid_api, paid_client
from tests.service.conftest import MemSides

from paid_http.client import PaidClient

Scenario = Callable[[Api, PaidClient, Offer], Awaitable[None]]


def run(sides: MemSides, scenario: Scenario) -> None:
    """Open a channel with one paid request, then run `scenario`; afterwards the API has
    served that one request only and stored that one payment only (beside the opening)."""
    async def main() -> None:
        async with paid_api(sides) as api, paid_client(sides) as client:
            assert (await client.get(api.url)).status == 200
            offer = await client.offer(api.url)
            await scenario(api, client, offer)
            assert api.api.served == 1
    asyncio.run(main())
    assert [p.amount for p in sides.payments()] == [1_000, PRICE]


async def fetch(url: str, headers: dict[str, str] | None = None, data: bytes | None = None,
                method: str = "GET") -> tuple[int, dict[str, str], dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=headers,
                                                             data=data) as response:
        return response.status, dict(response.headers), await response.json()


def test_a_request_without_a_payment_gets_the_offer(sides: MemSides) -> None:
    async def main() -> None:
        async with paid_api(sides) as api:
            status, headers, body = await fetch(api.url + "anything?x=1")
            assert status == 402
            assert headers[CHALLENGE_HEADER].startswith('Payment id="')
            assert 'method="paychan", intent="session"' in headers[CHALLENGE_HEADER]
            assert body == {"price": PRICE, "endpoint": api.url.replace("/api/", "/paychan"),
                            "min_channel_value": 100_000, "open_payment": 1_000,
                            "versions": list(VERSIONS), "unit": "request", "reserve": 0,
                            "quantity": 1,
                            "header": PAYMENT_HEADER,
                            "error": "payment required"}
            assert api.api.served == 0
    asyncio.run(main())


def test_a_header_that_does_not_parse_is_a_400(sides: MemSides) -> None:
    async def main() -> None:
        async with paid_api(sides) as api:
            for header in ("nonsense", "Payment not-base64!", "Payment " + base64.b64encode(
                    b'{"method": "paychan", "payload": {"session": "s", "payment": "AQ"}}'
            ).decode(), "Bearer abc"):
                status, _, body = await fetch(api.url, {PAYMENT_HEADER: header})
                assert status == 400, body
            assert api.api.served == 0
    asyncio.run(main())


def test_a_payment_to_an_unknown_session_is_a_402(sides: MemSides) -> None:
    async def scenario(api: Api, client: PaidClient, offer: Offer) -> None:
        payment = await client.pay(offer, PRICE)
        status, _, body = await fetch(api.url, {
            PAYMENT_HEADER: credential("not-a-session", payment.frame)})
        assert status == 402 and "no open channel in that session" in str(body["error"])
        assert body["price"] == PRICE  # the offer, to open or resume a channel
        await payment.abandon()
    run(sides, scenario)


def test_an_underpayment_is_a_402(sides: MemSides) -> None:
    async def scenario(api: Api, client: PaidClient, offer: Offer) -> None:
        payment = await client.pay(offer, PRICE - 1)
        status, headers, body = await fetch(api.url, payment.header)
        assert status == 402
        assert body["error"] == f"underpaid: the payment adds {PRICE - 1} sat, the request " \
                                f"needs {PRICE}"
        assert not await payment.settle(headers)  # no ack: the client hangs up
    run(sides, scenario)


def test_a_replayed_payment_is_a_402(sides: MemSides) -> None:
    async def scenario(api: Api, client: PaidClient, offer: Offer) -> None:
        first = await client.pay(offer, PRICE)
        status, headers, _ = await fetch(api.url, first.header)
        assert status == 200 and await first.settle(headers)
        status, _, body = await fetch(api.url, first.header)  # the same header again
        assert status == 402 and "not new (replayed or old)" in str(body["error"])
    async def main() -> None:
        async with paid_api(sides) as api, paid_client(sides) as client:
            assert (await client.get(api.url)).status == 200
            offer = await client.offer(api.url)
            await scenario(api, client, offer)
            assert api.api.served == 2
    asyncio.run(main())
    assert [p.amount for p in sides.payments()] == [1_000, PRICE, PRICE]


def test_a_bad_signature_is_a_400_and_the_client_resumes(sides: MemSides) -> None:
    async def main() -> None:
        async with paid_api(sides) as api, paid_client(sides) as client:
            assert (await client.get(api.url)).status == 200
            offer = await client.offer(api.url)
            payment = await client.pay(offer, PRICE)
            message = decode(payment.frame)
            signature = bytearray(message.update_payment.signature)
            signature[10] ^= 1
            message.update_payment.signature = bytes(signature)
            forged = encode([message])[0]
            assert payment.link.session is not None
            status, headers, body = await fetch(api.url, {
                PAYMENT_HEADER: credential(payment.link.session, forged)})
            assert status == 400 and "payment refused" in str(body["error"])
            assert "does not verify" in str(body["error"])
            assert headers.get(CLOSED_HEADER) == "1"
            assert api.api.served == 1
            assert not await payment.settle(headers)
            # The client resumes (its stored payment is its proof) and pays again.
            assert (await client.get(api.url)).status == 200
            assert api.api.served == 2
    asyncio.run(main())
    assert [p.amount for p in sides.payments()] == [1_000, PRICE, PRICE, PRICE]


def test_the_endpoint_refuses_bad_frames_and_unknown_sessions(sides: MemSides) -> None:
    async def main() -> None:
        async with paid_api(sides) as api:
            endpoint = api.url.replace("/api/", "/paychan")
            status, _, body = await fetch(endpoint, data=b"\x00\x00\x00\x05ab", method="POST")
            assert status == 400 and "bad frames" in str(body["error"])
            status, _, body = await fetch(endpoint, {SESSION_HEADER: "gone",
                                                     "Content-Type": FRAMES_TYPE},
                                          join_frames([]), "POST")
            assert status == 410 and "no such session" in str(body["error"])
    asyncio.run(main())
