"""One fee policy (`autopilot.fees`) prices every transaction the product pays for: the
contract, the cooperative settlement, the refund asked for by hand. Its cap holds even where
the node would pay more (the regtest wallet's fallback fee is 20 sat/vB). The contract is
funded by a real node's wallet; the settlement and the refund are priced on the in-process
chain."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.fees import FeePolicy
from bitcoind_paychan.node import to_sat
from regtest.memnode import MemNode
from regtest.node import RegtestNode
from tests.service.conftest import FAST, MemSides, Sides, advance_chain_time

VALUE = 300_000


def fee_rate(node: RegtestNode | MemNode, tx: Transaction) -> float:
    """sat/vB paid by `tx` (its inputs looked up by txindex)."""
    if isinstance(node, MemNode):
        return node.memchain.fee(tx) / tx.vsize
    spent = sum(to_sat(node.rpc("getrawtransaction", i.prevout.txid_hex, True)
                       ["vout"][i.prevout.index]["value"]) for i in tx.inputs)
    return (spent - sum(o.value for o in tx.outputs)) / tx.vsize


def test_the_contract_never_pays_more_than_max_rate(sides: Sides) -> None:
    capped = replace(FAST, fees=FeePolicy(max_rate=2))

    async def scenario() -> Transaction:
        server = sides.server()
        host, port = await server.listen()
        channel = await sides.client(autopilot=capped).open(host, port, VALUE)
        await server.stop()
        return Transaction.parse(channel.record.contract_tx)

    contract = asyncio.run(scenario())
    assert 1 <= fee_rate(sides.server_node, contract) <= 2  # not the wallet's 20 sat/vB


def test_the_cooperative_settlement_pays_the_fee_policy(mem_sides: MemSides) -> None:
    server_fees = replace(FAST, fees=FeePolicy(min_rate=4, max_rate=4))

    async def scenario() -> Transaction:
        server = mem_sides.server(autopilot=server_fees)
        host, port = await server.listen()
        channel = await mem_sides.client().open(host, port, VALUE)
        await channel.pay(50_000)
        settlement = await channel.close()
        await server.stop()
        return settlement

    settlement = asyncio.run(scenario())
    assert 4 <= fee_rate(mem_sides.server_node, settlement) < 4.1


def test_a_refund_asked_for_by_hand_pays_the_fee_policy(mem_sides: MemSides) -> None:
    client = mem_sides.client(autopilot=replace(FAST, fees=FeePolicy(min_rate=3, max_rate=3)))

    async def open_then_lose_the_server() -> Transaction:
        server = mem_sides.server()
        host, port = await server.listen()
        channel = await client.open(host, port, VALUE)
        await server.stop()  # gone, without settling
        await client.stop()
        return Transaction.parse(channel.record.contract_tx)

    contract = asyncio.run(open_then_lose_the_server())
    mem_sides.mine(1)
    advance_chain_time(mem_sides, client.channels()[0].contract.expiry)
    refund = asyncio.run(client.refund(contract.txid_hex))
    assert 3 <= fee_rate(mem_sides.client_node, refund) < 3.1  # old: the node's 1 sat/vB
