"""A paid request's credit is taken in the transaction that stores its payment: one commit,
no state between the two for a crash to leave. A take that fails forwards nothing and charges
nothing; a request that goes away after its payment's commit made the take gives it back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from bitcoind_paychan.errors import StoreError
from bitcoind_paychan.gateway.credit import Credit
from bitcoind_paychan.store import SQLiteStore
from bitcoind_paychan.store.base import Payment
from bitcoind_paychan.store.credit import Take
from bitcoind_paychan.transport.paidhttp import read_receipt
from regtest.waiting import until
from tests.gateway.conftest import OPEN, PRICE, Bench
from tests.gateway.test_proxy import run
from tests.service.conftest import MemSides
from tests.store.test_credit import paid


class FailingStore(SQLiteStore):
    """A store whose next `failing_takes` takes of credit alone, and next `failing_payments`
    commits of payments, fail (nothing taken, nothing stored)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failing_takes = self.failing_payments = 0
        self.busy = False  # every take to the takes' thread, as while payments commit

    def take_credits_now(self, takes: Sequence[Take]) -> list[tuple[int | None, int]] | None:
        return None if self.busy else super().take_credits_now(takes)

    def take_credits(self, takes: Sequence[Take]) -> list[tuple[int | None, int]]:
        if self.failing_takes:
            self.failing_takes -= 1
            raise StoreError("could not take the credit: disk I/O error (the test's)")
        return super().take_credits(takes)

    def _store_payments(self, conn: object, batch: Sequence[Payment]
                        ) -> list[StoreError | None]:
        if self.failing_payments:
            self.failing_payments -= 1
            raise StoreError("could not record the payment: disk I/O error (the test's)")
        return super()._store_payments(conn, batch)  # type: ignore[arg-type]


def test_a_paid_request_costs_the_gateway_one_commit_its_payment_and_take_together(
        sides: MemSides) -> None:
    async def scenario(b: Bench) -> None:
        assert (await b.paid("/api/one", PRICE))[0] == 200  # opens the channel
        payments, takes = b.manager.payments.commits, b.gateway.credit.commits
        status, _, headers, _ = await b.paid("/api/two", PRICE)
        receipt = read_receipt(headers["Payment-Receipt"])
        assert status == 200 and (receipt.charged, receipt.credit) == (PRICE, OPEN)
        assert b.manager.payments.commits == payments + 1  # the payment and its take
        assert b.gateway.credit.commits == takes  # no take of its own
    run(sides, scenario)


def test_a_payment_whose_commit_fails_is_not_stored_and_nothing_is_taken(
        sides: MemSides) -> None:
    store = sides.stores["gateway"] = FailingStore(sides.tmp / "gateway.db")

    async def scenario(b: Bench) -> None:
        assert (await b.paid("/api/one", PRICE))[0] == 200
        (channel,) = [e.record.contract_txid for e in sides.opened()]
        store.failing_payments = 1
        status, body, headers, _ = await b.paid("/api/two", 500)
        assert status == 503 and "could not store the payment" in body["error"]
        assert "Payment-Receipt" not in headers  # not acknowledged: the client resumes
        assert store.credit(channel) == OPEN  # neither the payment nor a take
        assert [path for path, _ in b.upstream.seen] == ["/api/one"]
    run(sides, scenario)


@pytest.mark.parametrize(("method", "busy"), [("GET", False), ("POST", True),
                                               ("GET", True)])
def test_a_take_that_fails_releases_nothing_and_charges_nothing(
        sides: MemSides, method: str, busy: bool) -> None:
    """The store is the gateway's alone, so the take of a request the credit covers is
    decided at once and committed on the loop when the store is free (a failed commit: not
    forwarded); when it is busy, by the takes' thread beside the forwarding. Either way a
    commit that fails is a 503 and nothing is charged: a POST waits for the commit, so it
    is never forwarded; a GET (safe) went upstream, and its answer is dropped."""
    store = sides.stores["gateway"] = FailingStore(sides.tmp / "gateway.db")
    channels: list[str] = []

    async def scenario(b: Bench) -> None:
        assert (await b.paid("/api/one", PRICE))[0] == 200
        offer = await b.offer("/api/two")
        store.failing_takes, store.busy = 1, busy
        status, body, headers = await b.get("/api/two", (await b.payer.spend(offer)).header,
                                            method=method)
        assert status == 503 and "not charged" in body["error"]
        assert set(body) == {"error"} and "/api/two" not in json.dumps(body)  # not released
        assert read_receipt(headers["Payment-Receipt"]).charged == 0
        forwarded = [path for path, _ in b.upstream.seen]
        if method == "POST" or not busy:
            assert "not forwarded" in body["error"] and forwarded == ["/api/one"]
        else:
            assert "its answer dropped" in body["error"]
            assert forwarded == ["/api/one", "/api/two"]
        spent = await b.payer.spend(offer)
        status, _, headers = await b.get("/api/three", spent.header, method=method)
        receipt = read_receipt(headers["Payment-Receipt"])
        assert status == 200 and (receipt.charged, receipt.credit) == (PRICE, OPEN - PRICE)
        assert [path for path, _ in b.upstream.seen][-1] == "/api/three"
        channels.append(spent.channel.contract_txid)
    run(sides, scenario)
    store.close()
    with SQLiteStore(sides.tmp / "gateway.db") as restarted:  # a restart: all still credit
        assert restarted.credit(channels[0]) == OPEN - PRICE


def test_what_was_taken_with_the_payment_of_a_request_gone_away_is_given_back(
        tmp_path: Path) -> None:
    async def scenario(store: SQLiteStore, channel: str) -> None:
        credit = Credit(store)
        made = credit.with_payment(channel, PRICE)
        made.contract_txid = channel  # attached to its payment, whose commit took PRICE:
        assert store.take_credits([made.take()]) == [(PRICE, 1_000 - PRICE)]
        made.answer = (PRICE, 1_000 - PRICE)
        credit.unclaimed(made)  # ...but the request went away before using it
        await until(lambda: store.credit(channel) == 1_000, what="the take given back")
        assert made.closed and made.answer is None
        credit.unclaimed(made)  # once only
        assert store.credit(channel) == 1_000

    with SQLiteStore(tmp_path / "gateway.db") as store:
        asyncio.run(scenario(store, paid(store, 1_000).txid))
