"""The httpx auth flow (gateway/client.py) against the gateway and a real upstream, its
channels on the in-process chain: unchanged httpx code pays per request out of the credit
its receipts show, caps refuse before anything is signed, a lost session is resumed, a
metered stream is topped up. (test_processes.py runs it against the gateway's own process on
a real node, with the synchronous client, curl and `paychan fetch`.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from bitcoind_paychan.errors import PriceRefused
from bitcoind_paychan.gateway.client import PaychanAuth, paying
from bitcoind_paychan.transport.paidhttp import read_receipt
from regtest.waiting import until
from tests.gateway.conftest import EVENT_SIZE, OPEN, PRICE, VALUE, Served, serving
from tests.service.conftest import FAST, Duo, MemSides

Scenario = Callable[[Served, PaychanAuth, httpx.AsyncClient], Awaitable[None]]


@contextlib.asynccontextmanager
async def client(sides: Duo, served: Served, **options: Any
                 ) -> AsyncIterator[tuple[PaychanAuth, httpx.AsyncClient]]:
    """httpx paying through the gateway `served`, the client's side of `sides` (`options`:
    `paying`'s, its caps, or its manager's, a `policy`)."""
    async with (paying(sides.client_ports(), sides.store("client"), VALUE,
                       poll_interval=sides.poll_interval, review_interval=0.5,
                       autopilot=FAST, **options) as auth,
                httpx.AsyncClient(auth=auth, base_url=served.url) as http):
        yield auth, http


def run(sides: MemSides, scenario: Scenario, **caps: int) -> None:
    async def main() -> None:
        async with serving(sides) as served, client(sides, served, **caps) as (auth, http):
            await scenario(served, auth, http)
    asyncio.run(main())


def test_httpx_code_spends_the_credit_its_receipts_show_without_a_payment_each(
        sides: MemSides) -> None:
    async def scenario(served: Served, auth: PaychanAuth, http: httpx.AsyncClient) -> None:
        credits = []
        for n in range(4):
            response = await http.get("/api/hello", params={"n": n})
            assert response.status_code == 200
            assert response.json() == {"path": "/api/hello", "query": {"n": str(n)}}
            receipt = read_receipt(response.headers["Payment-Receipt"])
            assert receipt.charged == PRICE
            credits.append(receipt.credit)
        # The opening payment's credit pays them (the endpoint said it as the channel
        # opened; then each receipt): each carries no payment, only its request number.
        assert credits == [OPEN - n * PRICE for n in (1, 2, 3, 4)]
        assert auth.paid == OPEN
        assert [path for path, _ in served.upstream.seen] == [
            f"/api/hello?n={n}" for n in range(4)]  # the unpaid first try not forwarded
        assert all("Authorization" not in headers for _, headers in served.upstream.seen)
        free = await http.get("/free/x")
        assert free.status_code == 200 and "Payment-Receipt" not in free.headers
        assert auth.paid == OPEN  # a free route costs nothing
    run(sides, scenario)
    assert [p.amount for p in sides.payments()] == [OPEN]


def test_an_offer_over_the_cap_per_request_is_refused_before_anything_is_signed(
        sides: MemSides) -> None:
    async def scenario(served: Served, auth: PaychanAuth, http: httpx.AsyncClient) -> None:
        with pytest.raises(PriceRefused, match=f"asks {PRICE} sat for a request .* over the "
                                               f"cap of {PRICE - 1} sat per request"):
            await http.get("/api/hello")
        with pytest.raises(PriceRefused, match="asks 5000 sat for a request"):
            await http.get("/bytes/api/data")  # its reserve is what a request costs
        assert served.upstream.seen == [] and auth.paid == 0
        assert (await http.get("/free/x")).status_code == 200
    run(sides, scenario, max_request=PRICE - 1)
    assert sides.payments() == []  # no channel was even opened


def test_payments_over_the_cap_in_all_are_refused(sides: MemSides) -> None:
    covered = OPEN // PRICE  # requests the opening payment's credit pays

    async def scenario(served: Served, auth: PaychanAuth, http: httpx.AsyncClient) -> None:
        for n in range(covered):
            assert (await http.get(f"/api/{n}")).status_code == 200  # spending credit
        lacking = PRICE - OPEN % PRICE
        with pytest.raises(PriceRefused, match=f"total paid to {OPEN + lacking} sat, over the "
                                               f"cap of {OPEN + 2}"):
            await http.get("/api/c")
        assert [path for path, _ in served.upstream.seen] == [f"/api/{n}"
                                                              for n in range(covered)]
        assert auth.paid == OPEN
    run(sides, scenario, max_total=OPEN + 2)
    assert [p.amount for p in sides.payments()] == [OPEN]


def test_a_payment_adds_the_credit_paid_ahead_within_the_caps(sides: MemSides) -> None:
    covered = OPEN // PRICE  # requests the opening payment's credit pays

    async def scenario(served: Served, auth: PaychanAuth, http: httpx.AsyncClient) -> None:
        for n in range(covered + 3):  # the first beyond: pays 3 requests' worth ahead
            assert (await http.get(f"/api/{n}")).status_code == 200
        assert auth.paid == OPEN + 3 * PRICE  # not 5 requests' worth: the cap in all
        with pytest.raises(PriceRefused, match="over the cap"):
            await http.get("/api/over")
        assert len(served.upstream.seen) == covered + 3
    run(sides, scenario, max_total=OPEN + 3 * PRICE, prepay=5 * PRICE)
    assert OPEN % PRICE == 0 and [p.amount for p in sides.payments()] == [OPEN, 3 * PRICE]


def test_a_request_whose_session_was_lost_resumes_the_channel_and_pays_again(
        sides: MemSides) -> None:
    async def scenario(served: Served, auth: PaychanAuth, http: httpx.AsyncClient) -> None:
        assert (await http.get("/api/a")).status_code == 200
        await served.gateway.sessions.close_all()  # as a restart loses them
        response = await http.get("/api/b")
        assert response.status_code == 200  # the 402 (unknown session): resumed, spent
        receipt = read_receipt(response.headers["Payment-Receipt"])
        # The credit is the channel's, not the session's: the endpoint said it as the channel
        # resumed, and /api/b spent it without a payment.
        assert receipt.credit == OPEN - 2 * PRICE
        assert [path for path, _ in served.upstream.seen] == ["/api/a", "/api/b"]
    run(sides, scenario)


def test_a_metered_stream_read_through_httpx_is_topped_up_when_it_asks(
        sides: MemSides) -> None:
    async def scenario(served: Served, auth: PaychanAuth, http: httpx.AsyncClient) -> None:
        events, asked = 0, 0
        async with http.stream("GET", "/meter/api/events", params={"n": 1_500}) as response:
            assert response.status_code == 200
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event: payment-required"):
                    event = "payment-required"
                elif line.startswith("data: {") and event:
                    asked += 1
                    await auth.top_up(str(response.url), 5_000)
                    event = ""
                elif line.startswith("data: "):
                    events += 1
        assert events == 1_500 and asked >= 1
        await until(lambda: served.upstream.seen, what="the stream's request")
    run(sides, scenario)
    cost = -(-1_500 * EVENT_SIZE // 10)
    assert sum(p.amount for p in sides.payments()) >= OPEN + cost
