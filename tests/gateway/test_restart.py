"""A gateway restarted mid-session loses no credit: it is in the store (store/credit.py),
derived from the stored payments, so the restarted gateway serves the client out of what it
paid before, on the channel it resumes (the payment the old session carried included)."""

from __future__ import annotations

import asyncio

from bitcoind_paychan.transport.paidhttp import read_receipt
from tests.gateway.conftest import OPEN, PRICE, Bench, paying, serving
from tests.service.conftest import MemSides


def test_a_gateway_restarted_mid_session_keeps_the_credit(sides: MemSides) -> None:
    async def main() -> None:
        async with paying(sides) as (http, payer):
            async with serving(sides) as first:
                b = Bench(first.upstream, first.url, first.gateway, first.manager, payer, http)
                status, _, headers, _ = await b.paid("/api/hello", PRICE + 5_000)
                assert status == 200
                assert read_receipt(headers["Payment-Receipt"]).credit == OPEN + 5_000
                (channel,) = [e.record.contract_txid for e in sides.opened()]
                port = int(first.url.rsplit(":", 1)[1])
            # The gateway stops (its sessions end) and starts again on the same store and
            # port, while the client goes on: its next request resumes the channel.
            async with serving(sides, port=port) as again:
                assert await again.gateway.credit.of(channel) == OPEN + 5_000
                b = Bench(again.upstream, again.url, again.gateway, again.manager, payer, http)
                # Its first payment names the old session: refused, never forwarded, no
                # receipt, so the client hangs up; the payment stays stored on its side.
                status, body, headers, _ = await b.paid("/api/hello", 1)
                assert status == 402 and "no open channel in that session" in body["error"]
                assert "Payment-Receipt" not in headers and again.upstream.seen == []
                # The next resumes the channel, whose proof is that payment: stored, credit.
                status, body, headers, _ = await b.paid("/api/hello", 1)
                assert status == 200 and body["path"] == "/api/hello"
                receipt = read_receipt(headers["Payment-Receipt"])
                credit = OPEN + 5_000 + 1 + 1 - PRICE  # nothing paid was lost
                assert (receipt.charged, receipt.credit) == (PRICE, credit)
                assert [(e.record.contract_txid, e.resumed) for e in sides.opened()] == [
                    (channel, False), (channel, True)]  # resumed, not a new channel
                assert await again.gateway.credit.of(channel) == credit
        assert [p.amount for p in sides.payments()] == [OPEN, PRICE + 5_000, 1, 1]

    asyncio.run(main())
