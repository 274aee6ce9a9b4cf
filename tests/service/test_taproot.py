"""Version 4 on real regtest nodes: what confirms is the spend the contract's design names,
read back from the node (`getrawtransaction TXID true`): the cooperative close by key path
(one 64-byte signature), the server's forced settlement through the payment leaf, the
client's refund through the refund leaf; amounts exact against both wallets."""

from __future__ import annotations

import asyncio
from typing import Any

from bitcoind_paychan.bitcoin.taproot import TapLeaf
from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.contract import Contract
from bitcoind_paychan.channel.records import Role
from bitcoind_paychan.service.client import PaymentClient
from regtest.node import RegtestNode
from tests.service.conftest import Sides, advance_chain_time
from tests.service.test_flow import wallet_utxo

VALUE = 600_000


def confirmed(node: RegtestNode, tx: Transaction) -> dict[str, Any]:
    """`node`'s view of `tx`, which a block holds."""
    info: dict[str, Any] = node.rpc("getrawtransaction", tx.txid_hex, True)
    assert info["confirmations"] == 1
    return info


def spent_leaf(contract: Contract, info: dict[str, Any]) -> bytes:
    """The leaf script the node saw input 0 spend, after checking its control block."""
    witness = [bytes.fromhex(item) for item in info["vin"][0]["txinwitness"]]
    script, control = witness[-2:]
    assert control == contract.kind.output.control_block(TapLeaf(script))  # type: ignore[attr-defined]
    return script


def test_the_cooperative_close_is_a_key_path_spend(sides: Sides) -> None:
    async def scenario() -> tuple[Contract, int, Transaction]:
        server = sides.server()
        host, port = await server.listen()
        channel = await sides.client().open(host, port, VALUE, version=4)
        for _ in range(12):
            await channel.pay(4_000)
        settlement = await channel.close()
        await server.stop()
        return channel.record.contract, channel.record.change, settlement

    contract, change, settlement = asyncio.run(scenario())
    sides.mine(1)
    info = confirmed(sides.server_node, settlement)
    (signature,) = info["vin"][0]["txinwitness"]
    assert len(bytes.fromhex(signature)) == 64  # the aggregate key's, SIGHASH_DEFAULT
    assert (info["vin"][0]["txid"], info["vin"][0]["vout"]) == (contract.txid, 0)
    paid = 1_000 + 12 * 4_000
    assert change == VALUE - paid
    share = settlement.outputs[1].value
    assert wallet_utxo(sides.client_node, settlement.txid_hex, 0) == change
    assert wallet_utxo(sides.server_node, settlement.txid_hex, 1) == share
    fee = VALUE - change - share  # from the server's share
    assert info["vsize"] <= fee <= info["vsize"] + 1
    stored = sides.server().store.get(Role.SERVER, contract.txid)
    assert stored is not None and stored.settlement_tx == settlement.serialize()
    assert not [e for e in sides.errors() if not e.remote]  # nobody refused anything


def test_the_forced_settlement_goes_through_the_payment_leaf(sides: Sides) -> None:
    async def scenario() -> tuple[Contract, int, Transaction]:
        server = sides.server()
        host, port = await server.listen()
        channel = await sides.client().open(host, port, VALUE, version=4)
        for _ in range(9):
            await channel.pay(3_000)
        await channel.disconnect()  # the client is gone: the server settles alone
        settlement = await server.settle(channel.contract_txid)
        await server.stop()
        return channel.record.contract, channel.record.change, settlement

    contract, change, settlement = asyncio.run(scenario())
    sides.mine(1)  # and both nodes have the block
    info = confirmed(sides.server_node, settlement)
    assert spent_leaf(contract, info) == contract.script  # the payment leaf
    client_sig, server_sig = (bytes.fromhex(s) for s in info["vin"][0]["txinwitness"][:2])
    assert len(client_sig) == len(server_sig) == 65
    paid = 1_000 + 9 * 3_000
    assert change == VALUE - paid
    share = settlement.outputs[1].value
    assert wallet_utxo(sides.client_node, settlement.txid_hex, 0) == change
    assert wallet_utxo(sides.server_node, settlement.txid_hex, 1) == share
    fee = VALUE - change - share
    assert info["vsize"] <= fee <= info["vsize"] + 2  # 1 sat/vB, sized with 65-byte sigs


def test_the_refund_goes_through_the_refund_leaf(sides: Sides) -> None:
    client = sides.client()

    async def open_then_lose_the_server() -> Contract:
        server = sides.server()
        host, port = await server.listen()
        channel = await client.open(host, port, VALUE, version=4)
        await channel.pay(10_000)
        await server.stop()
        return channel.record.contract

    contract = asyncio.run(open_then_lose_the_server())
    sides.mine(1)
    advance_chain_time(sides, contract.expiry)
    refund = asyncio.run(PaymentClient(client.ports, client.store).refund(contract.txid))
    sides.client_node.mine(1)  # its clock moved: the server's node dropped it
    info = confirmed(sides.client_node, refund)
    leaf = spent_leaf(contract, info)
    assert leaf != contract.script and leaf.endswith(contract.client_pub[1:] + b"\xac")
    assert len(info["vin"][0]["txinwitness"]) == 3  # the client's signature alone
    assert info["locktime"] == contract.expiry
    assert wallet_utxo(sides.client_node, refund.txid_hex, 0) == refund.outputs[0].value
    assert VALUE - refund.outputs[0].value <= info["vsize"] + 2
