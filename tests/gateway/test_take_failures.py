"""Between a request's payment and the take of its credit: the payment is stored (credit) and
nothing is taken yet. A take that fails there (as a crash would leave it) forwards nothing,
charges nothing, still gives the client its ack, and loses none of the payment, across a
restart too."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bitcoind_paychan.errors import StoreError
from bitcoind_paychan.store import SQLiteStore
from bitcoind_paychan.store.credit import Take
from bitcoind_paychan.transport.paidhttp import read_receipt
from tests.gateway.conftest import OPEN, PRICE, Bench
from tests.gateway.test_proxy import run
from tests.service.conftest import MemSides


class FailingTakes(SQLiteStore):
    """A store whose next `failures` batches of credit takes fail (nothing taken)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failures = 0

    def take_credits(self, takes: Sequence[Take]) -> list[tuple[int | None, int]]:
        if self.failures:
            self.failures -= 1
            raise StoreError("could not take the credit: disk I/O error (the test's)")
        return super().take_credits(takes)


def test_a_take_failing_after_the_payment_was_stored_forwards_nothing_and_loses_nothing(
        sides: MemSides) -> None:
    store = sides.stores["gateway"] = FailingTakes(sides.tmp / "gateway.db")
    channels: list[str] = []

    async def scenario(b: Bench) -> None:
        assert (await b.paid("/api/one", PRICE))[0] == 200
        store.failures = 1
        status, body, headers, payment = await b.paid("/api/two", 500)
        assert status == 503 and "not forwarded, not charged" in body["error"]
        assert read_receipt(headers["Payment-Receipt"]).charged == 0
        assert payment.paying.done() and not payment.paying.cancelled()  # acknowledged
        spent = await b.payer.spend(await b.offer("/api/three"))
        status, _, headers = await b.get("/api/three", spent.header)
        receipt = read_receipt(headers["Payment-Receipt"])
        assert status == 200 and (receipt.charged, receipt.credit) == (PRICE,
                                                                        OPEN + 500 - PRICE)
        assert [path for path, _ in b.upstream.seen] == ["/api/one", "/api/three"]
        channels.append(spent.channel.contract_txid)
    run(sides, scenario)
    store.close()
    with SQLiteStore(sides.tmp / "gateway.db") as restarted:  # a restart: all still credit
        assert restarted.credit(channels[0]) == OPEN + 500 - PRICE
    assert [p.amount for p in sides.payments()] == [OPEN, PRICE, 500]
