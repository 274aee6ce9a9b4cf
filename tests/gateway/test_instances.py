"""Two gateway instances on one real PostgreSQL share a channel's credit: what a client paid
through one is spent through the other (each instance is its own PostgresStore, its own
leases; the store-level race of two instances charging at once: tests/store/test_credit.py)."""

from __future__ import annotations

import asyncio

from bitcoind_paychan.store.leases import ClusterPolicy, leases_for
from bitcoind_paychan.store.postgres import PostgresStore
from bitcoind_paychan.transport.paidhttp import read_receipt
from tests.gateway.conftest import OPEN, PRICE, Bench, Served, paying, serving
from tests.service.conftest import MemSides


def test_two_instances_on_postgresql_share_the_credit(sides: MemSides, postgres_dsn: str
                                                      ) -> None:
    async def main() -> None:
        with PostgresStore(postgres_dsn) as store_a, PostgresStore(postgres_dsn) as store_b:
            leases_a = leases_for(store_a, ClusterPolicy("a", takeover_after=1.0))
            leases_b = leases_for(store_b, ClusterPolicy("b", takeover_after=1.0))
            async with paying(sides) as (http, payer):

                def bench(served: Served) -> Bench:
                    return Bench(served.upstream, served.url, served.gateway, served.manager,
                                 payer, http)

                async with serving(sides, store=store_b, leases=leases_b) as b:
                    async with serving(sides, store=store_a, leases=leases_a) as a:
                        status, _, headers, _ = await bench(a).paid("/api/hello",
                                                                    PRICE + 5_000)
                        assert status == 200
                        (channel,) = [e.record.contract_txid for e in sides.opened()]
                        credit = OPEN + 5_000
                        assert read_receipt(headers["Payment-Receipt"]).credit == credit
                        assert await b.gateway.credit.of(channel) == credit  # b sees it at once
                        port = int(a.url.rsplit(":", 1)[1])
                    # a stops; b takes its address (as a balancer would send the client on)
                    async with serving(sides, store=store_b, leases=leases_b,
                                       port=port) as b_there:
                        there = bench(b_there)
                        status, _, headers, _ = await there.paid("/api/hello", 1)
                        assert status == 402  # a's session: the client hangs up, resumes
                        status, _, headers, _ = await there.paid("/api/hello", 1)
                        receipt = read_receipt(headers["Payment-Receipt"])
                        credit += 1 + 1 - PRICE
                        assert status == 200 and (receipt.charged, receipt.credit) == (
                            PRICE, credit)
                        assert await a.gateway.credit.of(channel) == credit  # one ledger
            assert [p.amount for p in sides.payments()] == [OPEN, PRICE + 5_000, 1, 1]

    asyncio.run(main())
