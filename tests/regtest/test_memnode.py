"""The in-process node's adapter face and its wallet: funding with change, signing with real
keys, locked coins, channel keys, lookups, blocks for the monitor."""

from __future__ import annotations

import asyncio

import pytest

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel.contract import Contract
from bitcoind_paychan.errors import (
    InsufficientFunds,
    NodeError,
    NodeUnreachable,
    TransactionRejected,
)
from bitcoind_paychan.node.bitcoind import Block
from bitcoind_paychan.node.monitor import BlockMonitor, ChainEvent
from bitcoind_paychan.node.ports import Node, NodePorts
from regtest.memchain import MemChain
from regtest.memnode import MemNode

BTC = 100_000_000


@pytest.fixture
def node() -> MemNode:
    node = MemNode(MemChain())
    node.wallet.receive(BTC, BTC // 2)
    return node


def test_it_is_every_port_of_a_node(node: MemNode) -> None:
    as_node: Node = node  # mypy holds it to the ports' protocols
    ports = NodePorts.of(as_node)
    assert all(port is node for port in (ports.chain, ports.broadcaster, ports.fees,
                                         ports.wallet))


def test_fund_pays_from_segwit_coins_with_change_and_locks_them(node: MemNode) -> None:
    async def scenario() -> None:
        script = await node.payout_script()
        funded = await node.fund(script, 120_000_000, fee_rate=2_000)
        tx = funded.tx
        assert tx.outputs[0] == TxOut(120_000_000, script) and len(tx.outputs) == 2
        # sized with the largest signatures, as bitcoind's wallet does: a vbyte to spare at most
        assert funded.fee == node.memchain.fee(tx)
        assert -(-2_000 * tx.vsize // 1000) <= funded.fee <= -(-2_000 * (tx.vsize + 1) // 1000)
        assert len(funded.inputs) == 2 and all(i.witness for i in tx.inputs)
        assert node.memchain.test_accept(tx) is None  # signed with the wallet's keys
        with pytest.raises(InsufficientFunds):
            await node.fund(script, 1_000)  # every coin is locked for the first
        await node.release(funded.inputs)
        again = await node.fund(script, 1_000)
        await node.broadcast(again.tx)
        assert not node.wallet.locked  # broadcast: no longer reserved, spent
        assert await node.is_spent(*again.inputs[0])
        assert await node.spender(*again.inputs[0]) == again.tx
        status = await node.transaction(again.txid)
        assert status is not None and status.confirmations == 0
        node.memchain.mine()
        status = await node.transaction(again.txid)
        assert status is not None and status.confirmations == 1
        assert status.block_height == node.memchain.height

    asyncio.run(scenario())


def test_fund_external_adds_inputs_and_change_keeping_the_draft_in_place(
        node: MemNode) -> None:
    client = PrivateKey.generate()
    server = PrivateKey.generate()

    async def scenario() -> None:
        contract_script = Contract(3, client.pub.data, server.pub.data, 1_700_000_000,
                                   OutPoint(bytes(32), 0), 10_000).script_pubkey
        funded = await node.fund(contract_script, 10_000)
        await node.broadcast(funded.tx)
        contract = Contract(3, client.pub.data, server.pub.data, 1_700_000_000,
                            OutPoint(funded.tx.txid, 0), 10_000)
        weight = contract.spend_weight()
        draft = contract.settlement_draft(0, 10_000, await node.payout_script())  # no fee left
        tx = await node.fund_external(draft, {(contract.txid, 0): weight}, 5_000)
        assert tx.inputs[0] == draft.inputs[0] and tx.outputs[:1] == draft.outputs
        assert len(tx.inputs) == 2 and tx.inputs[1].witness  # the wallet's, signed
        signed = contract.sign_settlement(tx, contract.sign_payment(client, 0), server)
        assert await node.check_acceptable(signed)
        assert node.memchain.fee(signed) >= -(-5_000 * signed.vsize // 1000)

    asyncio.run(scenario())


def test_a_channel_key_makes_its_refunds_the_wallets(node: MemNode) -> None:
    key = PrivateKey.generate()
    contract = Contract(2, key.pub.data, PrivateKey.generate().pub.data, 1, OutPoint(
        bytes(32), 0), 1)

    async def scenario() -> None:
        before = node.wallet.balance()
        await node.watch_key(key.to_wif(Network.REGTEST))
        node.memchain.mine(payouts=[TxOut(50_000, contract.change_script)])
        assert node.wallet.balance() == before + 50_000

    asyncio.run(scenario())


def test_broadcast_refusals_carry_the_reason_and_a_down_node_is_unreachable(
        node: MemNode) -> None:
    coin = next(iter(node.wallet.coins()))
    unsigned = Transaction(2, (TxIn(coin),), (TxOut(1_000, bytes(22)),))

    async def scenario() -> None:
        with pytest.raises(TransactionRejected) as refused:
            await node.broadcast(unsigned)
        assert "mandatory-script-verify-flag-failed" in refused.value.reason
        assert not (await node.test_accept(unsigned)).allowed
        node.down = True
        with pytest.raises(NodeUnreachable):
            await node.tip()

    asyncio.run(scenario())


def test_the_block_monitor_follows_blocks_and_reorgs(node: MemNode) -> None:
    events: list[ChainEvent] = []

    async def heard(event: ChainEvent) -> None:
        events.append(event)

    async def scenario() -> tuple[Block, Block]:
        monitor = BlockMonitor(node, heard, poll_interval=3600)
        await monitor.sync()
        node.memchain.mine(2)
        await monitor.sync()
        node.memchain.reorg(1)
        tip = await monitor.sync()
        assert await node.raw_block(tip.hash) == node.memchain.tip.raw()
        return tip, events[-1].disconnected[0]

    tip, gone = asyncio.run(scenario())
    assert tip.hash == node.memchain.tip.hash and tip.height == node.memchain.height
    assert [len(e.connected) for e in events[1:]] == [2, 2]
    assert gone.height == node.memchain.height - 1


def test_the_chain_source_ports_answer_from_the_chain(node: MemNode) -> None:
    async def scenario() -> None:
        block, = node.memchain.mine()
        assert node.chain == "regtest" and await node.best_block_hash() == block.hash
        header = await node.block_header(block.hash)
        assert (header.height, header.prev_hash, header.median_time) == (
            block.height, block.prev_hash, block.median_time)
        assert await node.raw_block(block.hash) == block.raw()
        coin = next(iter(node.wallet.coins()))
        spend = node.wallet.sign(Transaction(2, (TxIn(coin),), (TxOut(1_000, bytes(22)),)))
        assert await node.mine(spend) and not await node.mine(spend)  # mined once
        assert node.memchain.tip.txs[1:] == (spend,)
        assert await node.spenders([(coin.txid_hex, coin.index)]) == {}  # confirmed, not in
        with pytest.raises(NodeError):
            await node.block_header("00" * 32)

    asyncio.run(scenario())


def test_reclaim_spends_a_locked_coin_whole_back_to_the_wallet(node: MemNode) -> None:
    """As the node adapter's `reclaim`: a coin (locked by a funding, say a refused
    re-anchor's) spent back to a fresh script of the wallet, replaceable, the fee from it."""
    async def scenario() -> None:
        funded = await node.fund(await node.payout_script(), 10_000_000, fee_rate=2_000)
        txid, index = funded.inputs[0]
        coin = OutPoint.from_hex(txid, index)
        assert coin in node.wallet.locked
        value = node.memchain.output(coin)
        assert value is not None
        back = await node.reclaim((txid, index), 3_000)
        assert [i.prevout for i in back.inputs] == [coin]
        assert back.inputs[0].sequence == 0xFFFFFFFD and len(back.outputs) == 1
        assert back.outputs[0].script_pubkey in node.wallet.keys
        fee = value.value - back.outputs[0].value
        assert fee == node.memchain.fee(back) and 0 < fee <= 3_000 * (back.vsize + 1) // 1000
        await node.broadcast(back)  # the funding that held it can no longer confirm
        with pytest.raises(TransactionRejected):
            await node.broadcast(funded.tx)
        with pytest.raises(NodeError):
            await node.reclaim((txid, index), 3_000)  # spent

    asyncio.run(scenario())
