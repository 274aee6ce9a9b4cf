"""Requests that spend credit paid ahead: their credential carries the session and a request
number, no payment; each number is used once, and one the credit does not cover is refused
and never forwarded. The gateway's credit takes are group-committed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

from bitcoind_paychan.gateway.credit import Credit
from bitcoind_paychan.store import SQLiteStore
from bitcoind_paychan.store.credit import Take
from bitcoind_paychan.transport.paidhttp import PAYMENT_HEADER, credential, read_receipt
from bitcoind_paychan.transport.paidhttp.server import Refused, at_least, take_payment
from regtest.waiting import until
from tests.gateway.conftest import OPEN, PRICE, Bench
from tests.gateway.test_proxy import run
from tests.service.conftest import MemSides
from tests.store.test_credit import paid


def test_a_request_the_credit_covers_carries_no_payment_and_is_charged_from_it(
        sides: MemSides) -> None:
    async def scenario(b: Bench) -> None:
        status, _, headers, _ = await b.paid("/api/one", PRICE)
        assert status == 200 and read_receipt(headers["Payment-Receipt"]).credit == OPEN
        offer = await b.offer("/api/two")
        spent = await b.payer.spend(offer)
        status, body, headers = await b.get("/api/two", spent.header)
        receipt = await spent.settle(headers)
        assert status == 200 and body["path"] == "/api/two"
        assert receipt is not None and (receipt.ack, receipt.charged, receipt.credit) == (
            b"", PRICE, OPEN - PRICE)
        status, body, headers = await b.get("/api/replayed", spent.header)
        assert status == 402 and "already used (replayed)" in body["error"]
        session = spent.link.session
        assert session is not None
        later = {PAYMENT_HEADER: credential(session, None, 5_000)}
        assert (await b.get("/api/later", later))[0] == 200  # numbers need not be in order
        old = {PAYMENT_HEADER: credential(session, None, 5_000 - 1_024)}
        status, body, _ = await b.get("/api/old", old)
        assert status == 402 and "too old" in body["error"]
        spent.link.seq = 5_000  # the client numbers on from the newest
        for n in range(OPEN // PRICE - 2):  # what is left of the credit
            assert (await b.get(f"/api/{n}", (await b.payer.spend(offer)).header))[0] == 200
        status, body, headers = await b.get("/api/more", (await b.payer.spend(offer)).header)
        assert status == 402 and "does not cover the request" in body["error"]
        assert read_receipt(headers["Payment-Receipt"]).credit == 0
        assert [p for p, _ in b.upstream.seen] == ["/api/one", "/api/two", "/api/later", *(
            f"/api/{n}" for n in range(OPEN // PRICE - 2))]
        assert not any("Authorization" in headers for _, headers in b.upstream.seen)
    run(sides, scenario)
    assert [p.amount for p in sides.payments()] == [OPEN, PRICE]


def test_a_retry_spending_credit_with_the_same_idempotency_key_is_not_charged_again(
        sides: MemSides) -> None:
    async def scenario(b: Bench) -> None:
        await b.paid("/api/one", PRICE)
        offer = await b.offer("/api/two")
        key = {"Idempotency-Key": "k1"}
        status, first, headers = await b.get("/api/two", (await b.payer.spend(offer)).header
                                             | key)
        assert status == 200 and read_receipt(headers["Payment-Receipt"]).charged == PRICE
        status, again, headers = await b.get("/api/two", (await b.payer.spend(offer)).header
                                             | key)
        receipt = read_receipt(headers["Payment-Receipt"])
        assert (status, again, receipt.charged, receipt.credit) == (200, first, 0,
                                                                    OPEN - PRICE)
        assert [p for p, _ in b.upstream.seen] == ["/api/one", "/api/two"]
    run(sides, scenario)


def test_a_service_that_takes_payments_only_refuses_a_credential_without_one(
        sides: MemSides) -> None:
    async def scenario(b: Bench) -> None:
        await b.paid("/api/one", PRICE)
        spent = await b.payer.spend(await b.offer("/api/two"))
        refused = await take_payment(b.gateway.sessions, spent.header[PAYMENT_HEADER],
                                     at_least(1))
        assert isinstance(refused, Refused) and refused.status == 400
        assert "carries no payment" in refused.why
    run(sides, scenario)


class HeldCommits(SQLiteStore):
    """A store whose first batch of credit takes waits for `release`; `batches`: the size of
    each batch committed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered, self.release = threading.Event(), threading.Event()
        self.batches: list[int] = []

    def take_credits(self, takes: Sequence[Take]) -> list[tuple[int | None, int]]:
        if not self.batches:
            self.entered.set()
            assert self.release.wait(timeout=30)
        self.batches.append(len(takes))
        return super().take_credits(takes)


def test_takes_arriving_during_a_commit_share_the_next_and_a_cancelled_one_is_given_back(
        tmp_path: Path) -> None:
    async def scenario(store: HeldCommits, channel: str) -> None:
        credit = Credit(store)
        first = asyncio.ensure_future(credit.take(channel, 100))
        await asyncio.to_thread(store.entered.wait, 30)  # its commit runs, held
        later = [asyncio.ensure_future(credit.take(channel, 100)) for _ in range(4)]
        await asyncio.sleep(0)  # each queued its take
        later[-1].cancel()  # its caller goes away before the commit answers
        store.release.set()
        assert await asyncio.gather(first, *later[:3]) == [100] * 4
        assert later[-1].cancelled()
        assert store.batches == [1, 4] and credit.commits == 2  # one commit for four takes
        await until(lambda: store.credit(channel) == 1_000 - 400,  # the cancelled one's 100
                    what="the cancelled take given back")
        assert await credit.of(channel) == 1_000 - 400

    with HeldCommits(tmp_path / "gateway.db") as store:
        asyncio.run(scenario(store, paid(store, 1_000).txid))
