"""Idempotency-Key: a retried paid request is answered again from what the gateway kept,
never forwarded nor charged twice; a retry while it runs, or for another request, is refused;
one that was not charged is a new request."""

from __future__ import annotations

import asyncio

from bitcoind_paychan.gateway.replays import KEY_HEADER
from bitcoind_paychan.transport.paidhttp import read_receipt
from regtest.waiting import until
from tests.gateway.conftest import OPEN, PRICE, Bench, bench
from tests.service.conftest import MemSides


def run(sides: MemSides, scenario: object) -> None:
    async def main() -> None:
        async with bench(sides) as b:
            await scenario(b)  # type: ignore[operator]
    asyncio.run(main())


def test_a_retry_is_answered_again_and_not_charged_twice(sides: MemSides) -> None:
    async def scenario(b: Bench) -> None:
        offer = await b.offer("/api/x")
        payment = await b.payer.pay(offer, PRICE)
        headers = payment.header | {KEY_HEADER: "order-1"}
        status, body, first = await b.get("/api/hello?n=1", headers)
        assert status == 200 and read_receipt(first["Payment-Receipt"]).charged == PRICE
        # The answer was lost on the way: the same request, the same credential.
        status, again, answer = await b.get("/api/hello?n=1", headers)
        receipt = read_receipt(answer["Payment-Receipt"])
        assert (status, again, receipt.charged, receipt.credit) == (200, body, 0, OPEN)
        assert answer["X-Up"] == "1"  # the upstream's headers, as the first time
        assert await payment.settle(answer) is not None  # its ack completes the payment
        # A retry carrying a new payment: stored and credited, still not charged.
        retry = await b.payer.pay(offer, 1)
        status, _, answer = await b.get("/api/hello?n=1", retry.header | {KEY_HEADER:
                                                                          "order-1"})
        receipt = read_receipt(answer["Payment-Receipt"])
        assert (status, receipt.charged, receipt.credit) == (200, 0, OPEN + 1)
        await retry.settle(answer)
        assert [path for path, _ in b.upstream.seen] == ["/api/hello?n=1"]  # forwarded once
        status, body, _ = await b.get("/api/other", retry.header | {KEY_HEADER: "order-1"})
        assert status == 422 and "was used for GET /api/hello?n=1" in body["error"]
    run(sides, scenario)
    assert [p.amount for p in sides.payments()] == [OPEN, PRICE, 1]


def test_a_retry_while_the_request_runs_is_refused(sides: MemSides) -> None:
    async def scenario(b: Bench) -> None:
        offer = await b.offer("/api/x")
        payment = await b.payer.pay(offer, PRICE)
        headers = payment.header | {KEY_HEADER: "k"}
        running = asyncio.ensure_future(b.get("/held/api/stall", headers))
        await until(lambda: b.upstream.seen, what="the upstream has it")
        status, body, _ = await b.get("/held/api/stall", headers)
        assert status == 409 and "is in progress" in body["error"]
        b.upstream.release.set()
        status, _, answer = await running
        assert status == 200 and read_receipt(answer["Payment-Receipt"]).charged == PRICE
        assert len(b.upstream.seen) == 1
    run(sides, scenario)


def test_a_request_not_charged_is_forgotten_and_a_stream_is_not_answered_twice(
        sides: MemSides) -> None:
    async def scenario(b: Bench) -> None:
        offer = await b.offer("/api/x")
        for _ in range(2):  # the upstream fails: not charged, so the retry is forwarded
            payment = await b.payer.pay(offer, 1)
            status, _, answer = await b.get("/api/fail", payment.header | {KEY_HEADER: "f"})
            assert status == 503 and read_receipt(answer["Payment-Receipt"]).charged == 0
            await payment.settle(answer)
        assert len(b.upstream.seen) == 2
        payment = await b.payer.pay(offer, 5_000)  # the stream's reserve
        headers = payment.header | {KEY_HEADER: "s"}
        status, body, _ = await b.get("/meter/api/data?n=100&chunked=1", headers)
        assert status == 200 and body == b"x" * 100
        status, body, _ = await b.get("/meter/api/data?n=100&chunked=1", headers)
        assert status == 409 and "charged 10 sat once" in body["error"]
        status, body, _ = await b.get("/api/x", payment.header | {KEY_HEADER: "k" * 256})
        assert status == 400 and KEY_HEADER in body["error"]
    run(sides, scenario)


def test_a_key_is_taken_before_the_payment_is_stored(sides: MemSides) -> None:
    """Request A waits for its session's lock (held here: a hook, not a timer) before its
    payment is stored; B, the same key meanwhile, is refused at once: never two charges."""
    async def scenario(b: Bench) -> None:
        offer = await b.offer("/api/x")
        payment = await b.payer.pay(offer, PRICE)
        assert payment.link.session is not None
        session = b.gateway.sessions.get(payment.link.session)
        assert session is not None
        headers = payment.header | {KEY_HEADER: "once"}
        async with session.lock:
            first = asyncio.ensure_future(b.get("/api/hello", headers))
            await until(lambda: b.gateway.replays.get(session.channel or "", "once"),
                        what="A has taken the key (and waits for the lock)")
            status, body, _ = await b.get("/api/hello", headers)
            assert status == 409 and "is in progress" in body["error"]
            assert not first.done()
        status, _, answer = await first
        assert status == 200 and read_receipt(answer["Payment-Receipt"]).charged == PRICE
        await payment.settle(answer)
        assert len(b.upstream.seen) == 1
    run(sides, scenario)
    assert [p.amount for p in sides.payments()] == [OPEN, PRICE]
