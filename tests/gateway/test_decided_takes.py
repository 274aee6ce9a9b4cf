"""On a store the gateway owns alone (SQLite here), a take the credit's lower bound covers is
decided at once (gateway/ledger.py): a safe request goes upstream beside the take's commit,
any other once it is committed, and no answer is released before the commit. Driven by a
take commit the test holds, not by timing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from bitcoind_paychan.store import SQLiteStore
from bitcoind_paychan.store.credit import Take
from bitcoind_paychan.transport.paidhttp import read_receipt
from regtest.waiting import until
from tests.gateway.conftest import OPEN, PRICE, Bench
from tests.gateway.test_proxy import run
from tests.service.conftest import MemSides


class HeldTakes(SQLiteStore):
    """A store whose takes of credit, once `hold` is set, wait for `release` (in the takes'
    thread, before their transaction)."""

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
