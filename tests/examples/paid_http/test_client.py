"""The paying client end to end on the in-process chain: a thousand paid requests settled on
chain with the exact total; a restarted client resumes its channel; a restarted server costs
at most one price."""

from __future__ import annotations

import asyncio

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.effects import ChannelOpened
from bitcoind_paychan.channel.records import Role
from regtest.node import free_port
from tests.examples.paid_http.conftest import PRICE, VALUE, paid_api, paid_client
from tests.service.conftest import MemSides
from tests.service.test_flow import wallet_utxo

OPENING = 1_000  # the protocol's initial payment (the server's min_payment)


def stored_total(sides: MemSides) -> int:
    """What the server's store says the client paid (the opening payment included)."""
    return sum(payment.amount for payment in sides.payments())


def test_a_thousand_paid_requests_then_the_settlement_pays_the_exact_total(
        sides: MemSides) -> None:
    async def scenario() -> tuple[list[int], int, Transaction]:
        async with paid_api(sides) as api, paid_client(sides) as client:
            paid = []
            for i in range(1_000):
                response = await client.get(f"{api.url}item?n={i}")
                assert response.status == 200, response.body
                assert response.json()["query"] == {"n": str(i)}
                paid.append(response.paid)
            settlement = await client.close(api.url)
            return paid, api.api.served, settlement

    paid, served, settlement = asyncio.run(scenario())
    total = OPENING + 1_000 * PRICE
    assert paid == [PRICE] * 1_000 and served == 1_000
    assert stored_total(sides) == total
    sides.mine(1)
    change, share = settlement.outputs[0].value, settlement.outputs[1].value
    assert change == VALUE - total  # the client gets back exactly what it did not pay
    fee = VALUE - change - share
    assert share + fee == total  # the server's output: every price, less the fee it pays
    assert wallet_utxo(sides.server_node, settlement.txid_hex, 1) == share
    assert wallet_utxo(sides.client_node, settlement.txid_hex, 0) == change


def test_a_restarted_client_resumes_its_channel(sides: MemSides) -> None:
    async def scenario() -> list[str]:
        async with paid_api(sides) as api:
            async with paid_client(sides) as client:
                for _ in range(3):
                    assert (await client.get(api.url)).status == 200
            async with paid_client(sides) as client:  # a new process on the same store
                for _ in range(2):
                    assert (await client.get(api.url)).status == 200
        return [e.record.contract_txid for e in sides.opened()]

    opened = asyncio.run(scenario())
    assert len(set(opened)) == 1  # one contract: opened once, then resumed
    assert [e.resumed for e in sides.events if isinstance(e, ChannelOpened)] == [False, True]
    assert stored_total(sides) == OPENING + 5 * PRICE  # the resume re-sent a paid payment
    record = sides.store("client").get(Role.CLIENT, opened[0])
    assert record is not None and record.paid == OPENING + 5 * PRICE


def test_a_restarted_server_costs_the_client_at_most_one_price(sides: MemSides) -> None:
    """The server's sessions die with it: the payment of the first request after the restart
    reaches no session (402). The client resumes, which re-sends that payment as its proof
    (stored: one price for nothing), then pays the request again."""
    async def scenario() -> tuple[int, int]:
        port = free_port()
        async with paid_client(sides) as client:
            async with paid_api(sides, port=port) as api:
                assert (await client.get(api.url)).status == 200
            async with paid_api(sides, port=port) as api:  # restarted: same store and port
                response = await client.get(api.url)
                assert response.status == 200 and response.paid == PRICE
                return api.api.served, client.paid

    served, paid = asyncio.run(scenario())
    assert (served, paid) == (1, 2 * PRICE)
    assert len({e.record.contract_txid for e in sides.opened()}) == 1  # resumed, not new
    assert stored_total(sides) == OPENING + 3 * PRICE


def test_a_used_up_channel_is_settled_and_the_next_request_opens_another(
        sides: MemSides) -> None:
    price, value = 10_000, 101_000  # the opening payment and ten requests use it all
    sides.fund_client(2)

    async def scenario() -> list[str]:
        async with (paid_api(sides, price=price) as api,
                    paid_client(sides, value=value) as client):
            for _ in range(11):
                response = await client.get(api.url)
                assert response.status == 200 and response.paid == price
        return [e.record.contract_txid for e in sides.opened()]

    first, second = asyncio.run(scenario())
    assert first != second
    settled = sides.store("api").get(Role.SERVER, first)
    assert settled is not None and settled.settlement_tx is not None
    settlement = Transaction.parse(settled.settlement_tx)
    assert len(settlement.outputs) == 1  # everything to the server
    assert stored_total(sides) == 2 * OPENING + 11 * price
