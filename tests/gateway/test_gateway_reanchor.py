"""The gateway and the server's re-anchoring together, end to end on real regtest nodes: a
client pays per request over HTTP with the httpx client while the server's autopilot pays
itself out (`payout_above`), R is mined and the channel promoted on both sides. Every
request is served once and charged once across the re-anchor, the credit the client had
left carries over it (receipts and the store), and every sat adds up: the receipts' charges
are the credit the store says was spent, and what the client paid is those charges plus the
credit left. (The server's terms come after a payment's ack, its lock before one: over HTTP
they ride in the receipt, and the client's R reaches the server after the payment it
carries: docs/paid-http.md 3 and 4.)"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import httpx

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.reanchor import promotion_depth
from bitcoind_paychan.channel.reanchor_autopilot import kinds
from bitcoind_paychan.channel.records import ChannelRecord, Role
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.gateway import Price, Route
from bitcoind_paychan.gateway.client import PaychanAuth
from bitcoind_paychan.transport.paidhttp import Receipt, read_receipt
from regtest.waiting import until
from tests.gateway.conftest import OPEN, PRICE, serving
from tests.gateway.test_httpx_client import client
from tests.service import conftest as on_nodes
from tests.service.conftest import FAST, Sides

sides = on_nodes.sides  # this module's `sides`: a server and a client beside real nodes
PREPAY = 3 * PRICE  # each payment pays for this request and the next two (credit ahead)
SERVER = ServerPolicy(reanchoring=True, payout_above=OPEN)  # quoted at the first payment
CLIENT = ClientPolicy(reanchoring=True)  # no autopilot of its own: it signs the payout


class Requests:
    """GETs of /api/hello?n=… through httpx, each checked served once and charged PRICE;
    the credit its receipt shows checked against the one before (what was paid added)."""

    def __init__(self, auth: PaychanAuth, http: httpx.AsyncClient) -> None:
        self.auth, self.http = auth, http
        self.receipts: list[Receipt] = []

    async def one(self) -> Receipt:
        n, paid = len(self.receipts), self.auth.paid
        before = self.receipts[-1].credit if self.receipts else 0  # no channel yet
        response = await self.http.get("/api/hello", params={"n": n})
        assert response.status_code == 200, response.text
        assert response.json()["query"] == {"n": str(n)}
        receipt = read_receipt(response.headers["Payment-Receipt"])
        assert receipt.charged == PRICE
        assert receipt.credit == before + self.auth.paid - paid - PRICE
        self.receipts.append(receipt)
        return receipt

    @property
    def channel(self) -> str:
        (channel,) = self.auth.receipts
        return channel


def test_requests_paid_through_the_gateway_carry_on_across_a_reanchor(sides: Sides) -> None:
    async def scenario() -> None:
        async with (serving(sides, [Route("/api", "/api", Price("request", PRICE))],
                            policy=SERVER) as served,
                    client(sides, served, policy=CLIENT, prepay=PREPAY) as (auth, http)):
            requests = Requests(auth, http)
            store = sides.store("gateway")

            def server_record() -> ChannelRecord:
                found = store.get(Role.SERVER, requests.channel)
                assert found is not None
                return found

            # Paid requests until the autopilot's payout R is complete on the server, and
            # the client has credit left.
            await requests.one()
            while (pending := server_record().pending) is None or not pending.complete or \
                    not requests.receipts[-1].credit:
                assert len(requests.receipts) < 40, "no re-anchor after 40 paid requests"
                await requests.one()
            assert kinds(server_record()) == ("payout",)
            left = requests.receipts[-1].credit
            assert 0 < left < PREPAY and await served.gateway.credit.of(requests.channel) == left

            r = Transaction.parse(pending.tx)
            await asyncio.to_thread(sides.mine, promotion_depth(r, 1, FAST.forget_depth))
            await until(lambda: server_record().generation == 1, 30, "the server's promotion")
            # The promotion moved no credit: the same as the last receipt said.
            assert await served.gateway.credit.of(requests.channel) == left

            # Served on: the credit left first, then payments that bring the server's lock
            # to the client, which moves to the next contract and goes on paying there.
            live = auth.payer.manager.live[requests.channel]
            before = len(requests.receipts)
            while live.record.generation == 0:
                assert len(requests.receipts) < before + 2 * PREPAY // PRICE, \
                    "the client was not moved to the next contract"
                await requests.one()
            assert live.record.contract_txid == r.txid_hex
            paid_on_c = auth.paid
            for _ in range(2 * PREPAY // PRICE):
                await requests.one()
            assert auth.paid > paid_on_c  # paid on the next contract too

            # Every sat adds up: what the client paid over the channel's life (the server's
            # record and its re-anchor's payout) = the charges + the credit left.
            record = server_record()
            (generation,) = store.generations(Role.SERVER, requests.channel)
            life = record.contract.value - record.change + generation.payout
            charged = sum(receipt.charged for receipt in requests.receipts)
            credit = await served.gateway.credit.of(requests.channel)
            assert generation.payout > 0 and auth.paid == life
            assert charged == PRICE * len(requests.receipts) == life - credit
            assert charged == spent(sides, requests.channel)
            assert auth.paid == charged + credit == charged + requests.receipts[-1].credit
            assert [path for path, _ in served.upstream.seen] == [
                f"/api/hello?n={n}" for n in range(len(requests.receipts))]
            assert sides.errors() == []  # no ERROR either way: the session lived throughout
    asyncio.run(scenario())


def spent(sides: Sides, channel: str) -> int:
    """The credit the gateway's store says was spent on `channel` (its own row, read
    beside the store)."""
    with contextlib.closing(sqlite3.connect(sides.tmp / "gateway.db")) as db:
        (found,) = db.execute("SELECT spent FROM credit_spent WHERE role = ? AND "
                              "contract_txid = ?", (Role.SERVER.value, channel)).fetchone()
    return int(found)
