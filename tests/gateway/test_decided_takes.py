"""On a store the gateway owns alone (SQLite here), a take the credit's lower bound covers is
decided at once (gateway/ledger.py): a safe request goes upstream beside the take's commit,
any other once it is committed, and no answer is released before the commit. Driven by a
take commit the test holds, not by timing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bitcoind_paychan.errors import StoreError
from bitcoind_paychan.gateway.credit import Credit
from bitcoind_paychan.store import SQLiteStore
from bitcoind_paychan.store.credit import Take
from bitcoind_paychan.transport.paidhttp import read_receipt
from regtest.waiting import until
from tests.gateway.conftest import OPEN, PRICE, Bench
from tests.gateway.test_proxy import run
from tests.gateway.test_take_failures import FailingStore
from tests.service.conftest import MemSides
from tests.store.helpers import Channel
from tests.store.test_credit import paid


class Busy(SQLiteStore):
    """A store never free at once (as while payments commit): every take goes to the takes'
    thread."""

    def take_credits_now(self, takes: Sequence[Take]) -> list[tuple[int | None, int]] | None:
        return None


class HeldTakes(Busy):
    """A busy store whose takes of credit, once `hold` is set, wait for `release` (in the
    takes' thread, before their transaction)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.hold = False
        self.waiting = threading.Event()  # a take waits for `release`
        self.release = threading.Event()

    def take_credits(self, takes: Sequence[Take]) -> list[tuple[int | None, int]]:
        if self.hold:
            self.waiting.set()
            self.release.wait(10)
        return super().take_credits(takes)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_no_answer_is_released_before_its_take_is_committed(sides: MemSides,
                                                            method: str) -> None:
    store = sides.stores["gateway"] = HeldTakes(sides.tmp / "gateway.db")

    async def scenario(b: Bench) -> None:
        assert (await b.paid("/api/one", PRICE))[0] == 200  # the channel, its credit known
        assert b.gateway.credit.decides_at_once
        store.hold = True
        spent = await b.payer.spend(await b.offer("/api/two"))
        answer = asyncio.ensure_future(b.get("/api/two", spent.header, method=method))
        await asyncio.to_thread(store.waiting.wait, 10)  # decided; its commit held
        if method == "GET":  # safe: forwarded beside the commit
            await until(lambda: len(b.upstream.seen) == 2, what="the GET forwarded")
        await asyncio.sleep(0.05)  # give a wrong gateway the time to answer
        assert not answer.done()
        assert [path for path, _ in b.upstream.seen][1:] == (
            ["/api/two"] if method == "GET" else [])
        store.release.set()
        status, _, headers = await answer
        receipt = read_receipt(headers["Payment-Receipt"])
        assert status == 200 and (receipt.charged, receipt.credit) == (PRICE, OPEN - PRICE)
        assert [path for path, _ in b.upstream.seen] == ["/api/one", "/api/two"]
        assert store.credit(spent.channel.contract_txid) == OPEN - PRICE
    run(sides, scenario)


@pytest.mark.parametrize("decided", [True, False])
def test_a_request_cancelled_after_its_take_committed_gets_it_back(tmp_path: Path,
                                                                   decided: bool) -> None:
    """The take's commit answers, and the request is cancelled before it resumes (the
    client gone, the gateway stopping): what it took goes back to the credit."""
    async def scenario(store: SQLiteStore, channel: str) -> None:  # busy: the thread
        credit = Credit(store, alone=True)
        assert await credit.take(channel, 0) == 0  # the store answers: the bound is known
        task: asyncio.Task[object] | None = None
        answer = credit._takes.answer

        def answered_then_cancelled(answers: list[Any]) -> None:
            answer(answers)  # the answer is set...
            assert task is not None
            task.cancel()  # ...and the request goes away before it resumes

        credit._takes.answer = answered_then_cancelled

        async def request() -> object:
            if not decided:
                return await credit.hold(channel, 0, PRICE)
            held, committed = await credit.hold_request(channel, 0, PRICE)
            assert held == PRICE and committed is not None  # decided at once
            return await credit.committed(channel, committed)

        task = asyncio.ensure_future(request())
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: store.credit(channel) == 1_000, what="the take given back")

    with Busy(tmp_path / "gateway.db") as store:
        asyncio.run(scenario(store, paid(store, 1_000).txid))


def test_a_take_decided_at_once_leaves_the_payments_counted_in_the_known_credit(
        tmp_path: Path) -> None:
    """What a receipt says comes from the known credit: a payment stored since the store's
    last answer stays counted in it after a take decided at once."""
    async def scenario(store: SQLiteStore) -> None:  # busy: the thread commits
        channel = Channel()
        record = channel.record()
        store.put(record)
        record = channel.pay(record, 3 * PRICE)
        store.record_payment(record, 3 * PRICE)
        credit = Credit(store, alone=True)
        assert await credit.take(channel.txid, PRICE) == PRICE  # known: 2 prices
        store.record_payment(channel.pay(record, 1_000), 1_000)
        credit.grew(channel.txid, 1_000)  # the payment stored
        held, committed = await credit.hold_request(channel.txid, 0, PRICE)
        assert held == PRICE and committed is not None  # the bound (2 prices) covers it
        assert credit.cached(channel.txid) == 1_000 + PRICE
        await credit.committed(channel.txid, committed)
        assert store.credit(channel.txid) == 1_000 + PRICE

    with Busy(tmp_path / "gateway.db") as store:
        asyncio.run(scenario(store))


def test_a_take_decided_at_once_is_committed_on_the_loop_when_nothing_is_before_it(
        tmp_path: Path) -> None:
    """With no take of the thread's waiting for its answer and the store free, the take is
    committed right away (no fsync: cheap), so nothing waits for the thread; with one
    waiting, or the store busy, the thread commits it after those before it."""
    async def scenario(store: SQLiteStore, channel: str) -> None:
        credit = Credit(store, alone=True)
        assert await credit.take(channel, 0) == 0  # the bound: 1,000
        held, committed = await credit.hold_request(channel, 0, PRICE)
        assert (held, committed) == (PRICE, None)  # committed already
        assert store.credit(channel) == 1_000 - PRICE
        assert (credit.commits, credit.all_commits) == (1, 2)  # the thread's, and this one
        locked, free = threading.Event(), threading.Event()

        def payment_commit() -> None:  # another thread's write holds the store
            with store._lock:
                locked.set()
                free.wait(10)

        writer = threading.Thread(target=payment_commit)
        writer.start()
        await asyncio.to_thread(locked.wait, 10)
        held, first = await credit.hold_request(channel, 0, PRICE)
        assert held == PRICE and first is not None  # the store busy: to the thread
        free.set()
        held, second = await credit.hold_request(channel, 0, PRICE)
        assert held == PRICE and second is not None  # free, but behind the first
        assert (await credit.committed(channel, first))[0] == PRICE
        assert (await credit.committed(channel, second))[0] == PRICE
        assert store.credit(channel) == 1_000 - 3 * PRICE
        writer.join()
        held, committed = await credit.hold_request(channel, 0, PRICE)
        assert (held, committed) == (PRICE, None)  # nothing before it again: here

    with SQLiteStore(tmp_path / "gateway.db") as store:
        asyncio.run(scenario(store, paid(store, 1_000).txid))


def test_a_take_committed_on_the_loop_that_fails_raises_and_takes_nothing(
        tmp_path: Path) -> None:
    async def scenario(store: FailingStore, channel: str) -> None:
        credit = Credit(store, alone=True)
        assert await credit.take(channel, 0) == 0  # the bound: 1,000
        store.failing_takes = 1
        with pytest.raises(StoreError, match="disk I/O error"):
            await credit.hold_request(channel, 0, 1_000)
        assert store.credit(channel) == 1_000  # nothing taken...
        held, committed = await credit.hold_request(channel, 0, 1_000)
        assert (held, committed) == (1_000, None)  # ...and the bound still covers it all
        assert store.credit(channel) == 0

    with FailingStore(tmp_path / "gateway.db") as store:
        asyncio.run(scenario(store, paid(store, 1_000).txid))
