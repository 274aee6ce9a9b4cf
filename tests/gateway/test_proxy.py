"""The gateway's proxy against a real upstream, channels on the in-process chain: what is
forwarded, what is charged, and every refusal (never forwarded, nothing stored)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from bitcoind_paychan.errors import PriceRefused
from bitcoind_paychan.gateway.payer import Payer
from bitcoind_paychan.gateway.upstream import SMALL
from bitcoind_paychan.transport.limits import PeerLimits
from bitcoind_paychan.transport.paidhttp import (
    CHALLENGE_HEADER,
    PAYMENT_HEADER,
    credential,
    read_receipt,
)
from bitcoind_paychan.transport.proxies import TrustedProxies
from regtest.waiting import until
from tests.gateway.conftest import OPEN, PRICE, Bench, bench
from tests.service.conftest import MemSides

Scenario = Callable[[Bench], Awaitable[None]]


def run(sides: MemSides, scenario: Scenario) -> None:
    async def main() -> None:
        async with bench(sides) as b:
            await scenario(b)
    asyncio.run(main())


def test_an_unpaid_request_gets_402_and_the_offer_and_is_not_forwarded(
        sides: MemSides) -> None:
    async def scenario(b: Bench) -> None:
        status, body, headers = await b.get("/api/hello?x=1")
        assert status == 402
        assert headers[CHALLENGE_HEADER].startswith('Payment id="')
        assert 'method="paychan", intent="session"' in headers[CHALLENGE_HEADER]
        assert headers["Cache-Control"] == "no-store"
        assert (body["price"], body["unit"], body["endpoint"]) == (
            PRICE, "request", b.url + "/paychan")
        assert body["error"] == "payment required"
        status, body, _ = await b.get("/bytes/data")
        assert (body["unit"], body["reserve"], body["quantity"]) == ("byte", 5_000, 10)
        status, _, _ = await b.get("/api/x", {PAYMENT_HEADER: "Bearer abc"})
        assert status == 402  # another scheme is not a payment
        assert b.upstream.seen == []
    run(sides, scenario)


def test_a_free_route_is_forwarded_and_unrouted_or_dotted_paths_are_not(
        sides: MemSides) -> None:
    async def scenario(b: Bench) -> None:
        status, body, headers = await b.get("/free/health?a=b")
        assert status == 200 and body == {"path": "/free/health", "query": {"a": "b"}}
        assert "Payment-Receipt" not in headers  # the upstream's forgery is dropped
        assert headers["X-Up"] == "1"
        assert (await b.get("/nowhere"))[0] == 404
        assert (await b.get("/free/%2e%2e/api/hello"))[0] == 400
        assert [path for path, _ in b.upstream.seen] == ["/free/health?a=b"]
    run(sides, scenario)


def test_a_paid_request_is_forwarded_without_payment_headers_and_charged_its_price(
        sides: MemSides) -> None:
    async def scenario(b: Bench) -> None:
        status, body, headers, payment = await b.paid("/api/hello?n=1", PRICE)
        assert status == 200 and body["path"] == "/api/hello"
        receipt = read_receipt(headers["Payment-Receipt"])
        assert (receipt.charged, receipt.credit) == (PRICE, OPEN)  # the opening payment's
        assert payment.paying.done()  # the manager completed the payment with the ack
        (path, sent), = b.upstream.seen
        lowered = {k.lower() for k in sent}
        assert path == "/api/hello?n=1"
        assert not lowered & {"authorization", "paychan-session", "payment-receipt"}
        assert sent["X-Forwarded-For"] == "127.0.0.1"
        payment = await b.payer.pay(await b.offer("/api/x"), PRICE)
        status, _, headers = await b.get("/api/again", payment.header | {
            "X-Forwarded-For": "6.6.6.6"})  # a client's own: not believed, not passed on
        await payment.settle(headers)
        assert status == 200 and read_receipt(headers["Payment-Receipt"]).charged == PRICE
        assert b.upstream.seen[-1][1]["X-Forwarded-For"] == "127.0.0.1"
    run(sides, scenario)
    assert [p.amount for p in sides.payments()] == [1_000, PRICE, PRICE]


def test_a_replayed_underpaid_foreign_or_malformed_payment_is_never_forwarded(
        sides: MemSides) -> None:
    async def scenario(b: Bench) -> None:
        status, _, headers, first = await b.paid("/api/one", PRICE)
        assert status == 200
        replayed = first.header
        status, body, headers = await b.get("/api/two", replayed)
        assert status == 402 and "not new (replayed or old)" in body["error"]
        assert "Payment-Receipt" not in headers
        under = await b.payer.pay(await b.offer("/bytes/data"), 3_000)
        status, body, headers = await b.get("/bytes/data", under.header)
        assert status == 402 and body["error"] == (  # the credit (OPEN) and 3,000 < 5,000
            f"underpaid: the payment adds 3000 sat, the request needs {5_000 - OPEN}")
        assert await under.settle(headers) is None  # no receipt: hung up, resumed later
        foreign = await b.payer.pay(await b.offer("/api/x"), PRICE)
        status, body, _ = await b.get("/api/four", {
            PAYMENT_HEADER: credential("not-a-session", foreign.frame)})
        assert status == 402 and "no open channel in that session" in body["error"]
        await foreign.abandon()
        status, body, _ = await b.get("/api/five", {PAYMENT_HEADER: "Payment !!"})
        assert status == 400 and "base64url" in body["error"]
        assert [path for path, _ in b.upstream.seen] == ["/api/one"]
        # Each refused payment the client signed is stored as a resume's proof: credit, not
        # lost (3,000 as `foreign` was signed, PRICE as the next one is).
        status, _, headers, _ = await b.paid("/api/six", 1)
        receipt = read_receipt(headers["Payment-Receipt"])
        assert (status, receipt.charged) == (200, PRICE)
        assert receipt.credit == OPEN + 3_000 + PRICE + 1 - PRICE
        assert [path for path, _ in b.upstream.seen] == ["/api/one", "/api/six"]
    run(sides, scenario)
    assert [p.amount for p in sides.payments()] == [OPEN, PRICE, 3_000, PRICE, 1]


def test_an_upstream_failure_is_not_charged_and_the_payment_stays_credit(
        sides: MemSides) -> None:
    async def scenario(b: Bench) -> None:
        status, body, headers, _ = await b.paid("/api/fail", PRICE)
        assert status == 503 and body == {"error": "upstream is broken"}
        receipt = read_receipt(headers["Payment-Receipt"])
        assert (receipt.charged, receipt.credit) == (0, OPEN + PRICE)
        # The credit pays the next request: it adds the minimum increment only.
        status, _, headers, _ = await b.paid("/api/hello", 1)
        receipt = read_receipt(headers["Payment-Receipt"])
        assert status == 200 and (receipt.charged, receipt.credit) == (PRICE, OPEN + 1)
        status, body, headers, _ = await b.paid("/slow/api/stall", 1)
        assert status == 504 and "did not answer within 0.2 s" in body["error"]
        receipt = read_receipt(headers["Payment-Receipt"])
        assert (receipt.charged, receipt.credit) == (0, OPEN + 2)
        status, body, headers, _ = await b.paid("/api/cut", 1)  # small: read whole first
        assert status == 502 and "broke off its answer" in body["error"]
        receipt = read_receipt(headers["Payment-Receipt"])
        assert (receipt.charged, receipt.credit) == (0, OPEN + 3)
        status, body, headers, _ = await b.paid(f"/api/cut?length={SMALL + 1}", 1)
        receipt = read_receipt(headers["Payment-Receipt"])  # charged with the headers...
        assert (receipt.charged, receipt.credit) == (PRICE, OPEN + 4 - PRICE)
        assert body is None  # ...but the body broke off, and the client can tell
        status, _, headers, _ = await b.paid("/api/hello", 1)
        receipt = read_receipt(headers["Payment-Receipt"])  # so it was given back
        assert (receipt.charged, receipt.credit) == (PRICE, OPEN + 5 - PRICE)
    run(sides, scenario)


def test_an_unreachable_upstream_is_a_502_not_charged(sides: MemSides) -> None:
    async def scenario(b: Bench) -> None:
        await b.gateway.upstreams.close()
        b.gateway.routes = tuple(r if r.path != "/api" else type(r)(
            r.path, "http://127.0.0.1:9/api", r.price) for r in b.gateway.routes)
        status, body, headers, _ = await b.paid("/api/hello", PRICE)
        assert status == 502 and "cannot be reached" in body["error"]
        assert read_receipt(headers["Payment-Receipt"]).charged == 0
    run(sides, scenario)


def test_per_byte_is_charged_after_the_work_and_the_rest_is_credit(sides: MemSides) -> None:
    async def scenario(b: Bench) -> None:
        status, body, headers, _ = await b.paid("/bytes/api/data?n=1234", 5_000)
        assert status == 200 and body == b"x" * 1234
        receipt = read_receipt(headers["Payment-Receipt"])
        held = OPEN + 5_000  # all the credit
        assert (receipt.charged, receipt.credit) == (124, held - 124)  # 1 sat / 10 bytes
        status, body, headers, _ = await b.paid("/bytes/api/data?n=2000", 1)
        receipt = read_receipt(headers["Payment-Receipt"])
        assert status == 200 and len(body) == 2000
        assert (receipt.charged, receipt.credit) == (200, held - 124 + 1 - 200)
        # Of unknown length (chunked): a metered stream, charged at its end; its receipt,
        # sent with the headers, says 0 so far, and all the credit is held.
        status, body, headers, _ = await b.paid("/bytes/api/data?n=3000&chunked=1", 1)
        receipt = read_receipt(headers["Payment-Receipt"])
        assert (status, len(body), receipt.charged, receipt.credit) == (200, 3000, 0, 0)
        status, _, headers, _ = await b.paid("/bytes/api/data?n=10", 1)
        receipt = read_receipt(headers["Payment-Receipt"])
        assert (receipt.charged, receipt.credit) == (1, held - 124 + 1 - 200 + 1 - 300 + 1 - 1)
    run(sides, scenario)


def test_per_byte_an_answer_larger_than_the_credit_pays_for_is_not_served(
        sides: MemSides) -> None:
    async def scenario(b: Bench) -> None:
        status, body, headers, _ = await b.paid("/bytes/api/data?n=70000", 5_000)
        assert status == 402  # 7,000 sat's worth; OPEN + 5,000 held
        assert body["error"].startswith("the answer is 70000 bytes, costs 7000 sat: more "
                                        f"than the {OPEN + 5_000} sat of credit held pay for")
        assert read_receipt(headers["Payment-Receipt"]).charged == 0
        status, body, headers, _ = await b.paid("/bytes/api/data?n=70000", 1_000)
        assert status == 200 and len(body) == 70_000
        receipt = read_receipt(headers["Payment-Receipt"])
        assert (receipt.charged, receipt.credit) == (7_000, OPEN + 6_000 - 7_000)
    run(sides, scenario)


def test_a_request_in_flight_holds_its_price_and_the_credit_adds_up(sides: MemSides) -> None:
    """A request held by its upstream (an event, not a timer) holds its price out of the
    channel's credit; in the end the credit is exactly what was stored less what was
    charged."""
    async def scenario(b: Bench) -> None:
        offer = await b.offer("/api/x")
        first = await b.payer.pay(offer, 1)
        stalled = asyncio.ensure_future(b.get("/held/api/stall", first.header))
        await until(lambda: b.upstream.seen, what="the upstream has it: its credit is held")
        # The stalled request's payment is stored but its ack not yet handed back: the
        # client's channel waits for it, so the next payment goes once it is settled.
        assert await b.gateway.credit.of(first.channel.contract_txid) == OPEN + 1 - PRICE
        b.upstream.release.set()
        status, _, headers = await stalled
        assert status == 200 and (await first.settle(headers)) is not None
        status, _, headers, _ = await b.paid("/api/y", 1)
        receipt = read_receipt(headers["Payment-Receipt"])
        assert (status, receipt.charged) == (200, PRICE)
        stored = sum(p.amount for p in sides.payments())
        assert receipt.credit == stored - 2 * PRICE == OPEN + 2 - 2 * PRICE
    run(sides, scenario)


def test_an_address_may_hold_only_so_many_sessions_without_a_channel(sides: MemSides) -> None:
    async def main() -> None:
        async with bench(sides, limits=PeerLimits(max_handshakes_per_ip=2)) as b:
            endpoint = b.url + "/paychan"

            async def new_session() -> int:
                async with b.http.post(endpoint, data=b"") as response:
                    return response.status

            assert await new_session() == 200  # one slot taken (no channel yet)
            status, _, _, _ = await b.paid("/api/x", 1)  # opens its channel: slot given back
            assert status == 200
            assert await new_session() == 200
            async with b.http.post(endpoint, data=b"") as response:
                assert response.status == 429
                assert "too many sessions from your address" in (await response.json())["error"]
    asyncio.run(main())


def test_behind_a_trusted_proxy_the_client_it_names_is_limited_and_forwarded(
        sides: MemSides) -> None:
    async def main() -> None:
        async with bench(sides, limits=PeerLimits(max_handshakes_per_ip=1),
                         proxies=TrustedProxies.parse(["127.0.0.1"])) as b:
            async def new_session(client: str) -> int:
                async with b.http.post(b.url + "/paychan", data=b"",
                                       headers={"X-Forwarded-For": client}) as response:
                    return response.status

            assert await new_session("10.0.0.1") == 200
            assert await new_session("10.0.0.1") == 429  # its one slot is taken
            assert await new_session("10.0.0.2") == 200  # another client behind the proxy
            status, _, _ = await b.get("/free/x", {"X-Forwarded-For": "10.0.0.3"})
            assert status == 200
            assert b.upstream.seen[-1][1]["X-Forwarded-For"] == "10.0.0.3, 127.0.0.1"
    asyncio.run(main())


def test_a_payer_refuses_payments_over_its_caps(sides: MemSides) -> None:
    async def scenario(b: Bench) -> None:
        # The opening payment counts toward the total.
        payer = Payer(b.payer.manager, max_payment=PRICE, max_total=OPEN + 2 * PRICE + 50)
        offer = await b.offer("/api/x")
        with pytest.raises(PriceRefused, match="over the cap of 100 sat per payment"):
            await payer.pay(offer, PRICE + 1)
        for _ in range(2):
            payment = await payer.pay(offer, PRICE)
            status, _, headers = await b.get("/api/x", payment.header)
            assert status == 200 and await payment.settle(headers) is not None
        with pytest.raises(PriceRefused, match="total paid to 1300 sat, over the cap of 1250"):
            await payer.pay(offer, PRICE)
        with pytest.raises(PriceRefused, match="a top-up of 51 sat"):
            await payer.top_up(offer, 51)
    run(sides, scenario)
    assert [p.amount for p in sides.payments()] == [OPEN, PRICE, PRICE]  # nothing else signed


def test_a_session_may_have_only_so_many_paid_requests_in_flight(sides: MemSides) -> None:
    async def main() -> None:
        async with bench(sides, in_flight=1) as b:
            payment = await b.payer.pay(await b.offer("/api/x"), PRICE)
            first = asyncio.ensure_future(b.get("/held/api/stall", payment.header))
            await until(lambda: b.upstream.seen, what="the first request in flight")
            status, body, headers = await b.get("/api/x", payment.header)
            assert status == 429 and "requests of this session are in flight" in body["error"]
            assert "Payment-Receipt" not in headers  # refused before its payment was looked at
            b.upstream.release.set()
            status, _, headers = await first
            assert status == 200 and await payment.settle(headers) is not None
            status, _, _, _ = await b.paid("/api/y", 1)  # the slot is free again
            assert status == 200
    asyncio.run(main())


def test_paid_requests_read_no_credit_beyond_their_take(sides: MemSides) -> None:
    """What a payment must add and what a receipt says come from what the gateway knows of
    the channel (each take reads the credit left in its own transaction): after the first,
    a paid request costs the store one payment and one take, no extra read."""
    async def scenario(b: Bench) -> None:
        offer = await b.offer("/api/x")
        payment = await b.payer.pay(offer, PRICE)
        status, _, headers = await b.get("/api/x", payment.header)
        assert status == 200 and await payment.settle(headers) is not None
        store = b.gateway.credit.store
        reads: list[str] = []
        read = store.credit

        def counted(channel: str) -> int:
            reads.append(channel)
            return read(channel)

        store.credit = counted  # type: ignore[method-assign, assignment]
        credits = []
        for _ in range(3):
            payment = await b.payer.pay(offer, 1)
            status, _, headers = await b.get("/api/x", payment.header)
            receipt = await payment.settle(headers)
            assert status == 200 and receipt is not None
            credits.append(receipt.credit)
        assert reads == []
        assert credits == [OPEN + n - n * PRICE for n in (1, 2, 3)]  # exact all the same
        assert credits[-1] == await b.gateway.credit.of(payment.channel.contract_txid)
    run(sides, scenario)
