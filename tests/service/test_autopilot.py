"""Channels on autopilot: deadlines, refunds, reorgs, outages, fees. Refunds, reorgs, an
outage and a fee bump on a real regtest node; the deadlines, views, waiting for a
confirmation and a double spend on the in-process chain."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from bitcoind_paychan.bitcoin.tx import Transaction, TxIn, TxOut
from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.channel.watch import WatchPolicy
from bitcoind_paychan.errors import StoreError
from bitcoind_paychan.service.client import Channel, PaymentClient
from bitcoind_paychan.service.server import PaymentServer
from regtest.waiting import until
from tests.service.conftest import FAST, Duo, MemSides, Sides

VALUE = 500_000


def status(client_or_server: PaymentClient | PaymentServer, role: Role,
           txid: str) -> ChannelStatus | None:
    record = client_or_server.store.get(role, txid)
    return record.status if record else None


def in_mempool(sides: Sides, txid: str) -> bool:
    return txid in sides.server_node.rpc("getrawmempool")


def spender_of(sides: Sides, txid: str) -> Transaction:
    """The transaction spending `txid`, from the mempool or the last 20 blocks."""
    node = sides.server_node
    candidates, block_hash = list(node.rpc("getrawmempool")), node.rpc("getbestblockhash")
    for _ in range(20):
        block = node.rpc("getblock", block_hash, 1)
        candidates += block["tx"]
        block_hash = block["previousblockhash"]
    for candidate in candidates:
        tx = Transaction.parse(bytes.fromhex(node.rpc("getrawtransaction", candidate)))
        if any(txin.prevout.txid_hex == txid for txin in tx.inputs):
            return tx
    raise AssertionError(f"nothing spends {txid}")


def spent_on_node(sides: Sides, txid: str) -> bool:
    """Whether the node knows a transaction spending `txid` (mempool or recent blocks)."""
    try:
        spender_of(sides, txid)
    except AssertionError:
        return False
    return True


async def mine(sides: Sides | MemSides, blocks: int = 1) -> None:
    await asyncio.to_thread(sides.mine, blocks)


async def open_channel(sides: Duo, pays: int = 3) -> tuple[PaymentServer, PaymentClient,
                                                              Channel]:
    server = sides.server()
    host, port = await server.listen()
    client = sides.client()
    channel = await client.open(host, port, VALUE)
    for _ in range(pays):
        await channel.pay(10_000)
    return server, client, channel


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_refund_confirms_on_its_own_when_the_server_is_gone(one_node: Sides,
                                                            version: int) -> None:
    sides = one_node

    async def scenario() -> tuple[str, Transaction]:
        server = sides.server()
        host, port = await server.listen()
        client = sides.client()
        channel = await client.open(host, port, VALUE, version=version)
        await channel.pay(20_000)
        await server.stop()  # the server vanishes for good
        txid, expiry = channel.contract_txid, channel.record.contract.expiry
        await mine(sides)
        assert status(client, Role.CLIENT, txid) is ChannelStatus.OPEN
        await asyncio.to_thread(sides.client_node.advance_median_time_past, expiry)

        def refund_broadcast() -> bool:
            try:
                return client.watcher.chain_state(txid).spender != b""
            except StoreError:  # the blocks that moved the clock buried it, and it was forgotten
                return True

        await until(refund_broadcast, what="the refund broadcast")
        # the refund is stored before it is broadcast: wait until the node has it
        await until(lambda: spent_on_node(sides, txid), what="the refund on the node")
        refund = spender_of(sides, txid)
        await mine(sides)
        await until(lambda: status(client, Role.CLIENT, txid) in (ChannelStatus.REFUNDED, None),
                    what="the refund to be recorded")
        await mine(sides)
        await until(lambda: status(client, Role.CLIENT, txid) is None, what="forgetting")
        await client.stop()
        return txid, refund

    txid, refund = asyncio.run(scenario())
    assert refund.locktime == sides.client_node.rpc("getrawtransaction", txid, True)[
        "locktime"] or refund.locktime > 0
    (finished,) = sides.client_events
    assert finished.status is ChannelStatus.REFUNDED
    assert finished.client_amount == refund.outputs[0].value
    assert VALUE - 2_000 < finished.client_amount < VALUE


def test_server_settles_before_the_refund_is_valid_and_the_client_records_it(
    mem_sides: MemSides,
) -> None:

    async def scenario() -> int:
        server, client, channel = await open_channel(mem_sides)
        txid, record = channel.contract_txid, channel.record
        deadline = record.contract.expiry - server.watcher.policy.settle_margin
        assert server.watcher.deadline_of(txid) is not None
        mem_sides.chain.mocktime = deadline + 60
        await mine(mem_sides)  # a block past the server's deadline: it settles
        await until(lambda: status(server, Role.SERVER, txid) is ChannelStatus.CLOSING,
                    what="the server to settle")
        median = mem_sides.chain.median_time()
        assert median < record.contract.expiry  # the client's refund is not valid yet
        await until(lambda: status(client, Role.CLIENT, txid) is ChannelStatus.CLOSING,
                    what="the client to see the settlement")
        await mine(mem_sides)
        await until(lambda: status(client, Role.CLIENT, txid) is ChannelStatus.SETTLED,
                    what="the client to record the settlement")
        await until(lambda: status(server, Role.SERVER, txid) is ChannelStatus.SETTLED)
        await mine(mem_sides)
        await until(lambda: status(server, Role.SERVER, txid) is None, what="server forgets")
        await until(lambda: status(client, Role.CLIENT, txid) is None, what="client forgets")
        await client.stop()
        await server.stop()
        return record.change

    change = asyncio.run(scenario())
    (client_finished,) = mem_sides.client_events
    assert client_finished.status is ChannelStatus.SETTLED
    assert client_finished.client_amount == change
    assert client_finished.server_amount == VALUE - change
    server_finished = [e for e in mem_sides.events if type(e).__name__ == "ChannelFinished"]
    assert len(server_finished) == 1


def test_reorgs_of_the_contract_and_the_settlement(one_node: Sides) -> None:
    sides = one_node
    node = sides.server_node

    async def scenario() -> None:
        server, client, channel = await open_channel(sides)
        txid = channel.contract_txid
        (contract_block,) = await asyncio.to_thread(node.mine, 1)
        await until(lambda: server.watcher.chain_state(txid).contract_height > 0)
        node.invalidate(contract_block)  # the contract goes back to the mempool
        await until(lambda: server.watcher.chain_state(txid).contract_height == 0,
                    what="the contract's confirmation to be undone")
        node.reconsider(contract_block)
        await until(lambda: server.watcher.chain_state(txid).contract_height > 0)
        settlement = await channel.close()
        (settled_block,) = await asyncio.to_thread(node.mine, 1)
        await until(lambda: status(server, Role.SERVER, txid) is ChannelStatus.SETTLED)
        # Reorg the settlement out with empty blocks, and drop it from the mempool.
        node.invalidate(settled_block)
        node.rpc("generateblock", node.new_address(), [])
        await until(lambda: status(server, Role.SERVER, txid) is ChannelStatus.CLOSING,
                    what="the settlement to be seen unconfirmed again")
        await until(lambda: in_mempool(sides, settlement.txid_hex),
                    what="the settlement to be broadcast again")
        await mine(sides)
        await until(lambda: status(server, Role.SERVER, txid) is ChannelStatus.SETTLED)
        await client.stop()
        await server.stop()

    asyncio.run(scenario())


def test_payments_continue_while_the_node_is_down_and_the_watcher_catches_up(
    one_node: Sides,
) -> None:
    sides = one_node
    node = sides.server_node

    async def scenario() -> None:
        server, client, channel = await open_channel(sides)
        txid = channel.contract_txid
        await asyncio.to_thread(node.stop)
        await until(lambda: not server.watcher.healthy, what="the outage to be noticed")
        for _ in range(10):
            await channel.pay(1_000)  # off-chain: no node needed
        await asyncio.to_thread(node.start, 60.0, 3, True)
        await mine(sides)
        await until(lambda: server.watcher.healthy, what="the node to be back")
        await until(lambda: server.watcher.chain_state(txid).contract_height > 0,
                    what="catch-up")
        settlement = await channel.close()
        assert settlement.outputs[0].value == VALUE - 1_000 - 3 * 10_000 - 10 * 1_000
        await client.stop()
        await server.stop()

    asyncio.run(scenario())


def test_a_low_fee_settlement_is_replaced_and_confirms(one_node: Sides) -> None:
    sides = one_node
    node = sides.server_node

    async def scenario() -> tuple[Transaction, str]:
        server, client, channel = await open_channel(sides)
        txid = channel.contract_txid
        await mine(sides)
        low = await channel.close()
        assert in_mempool(sides, low.txid_hex)
        policy = server.watcher.policy  # the estimate rises to 10 sat/vB
        server.watcher.policy = replace(policy, fees=replace(policy.fees, min_rate=10))
        node.rpc("generateblock", node.new_address(), [])  # a block without it
        await until(lambda: server.store.chain_state(Role.SERVER, txid).broadcast_height,
                    what="the settlement's clock started (a review saw it unconfirmed)")
        for _ in range(server.watcher.policy.bump_after_blocks):  # more: it is stuck
            node.rpc("generateblock", node.new_address(), [])
        await until(lambda: not in_mempool(sides, low.txid_hex), what="the replacement")
        record = server.store.get(Role.SERVER, txid)
        assert record is not None and record.settlement_tx is not None
        high = Transaction.parse(record.settlement_tx)
        assert in_mempool(sides, high.txid_hex)
        await mine(sides)
        await until(lambda: status(server, Role.SERVER, txid) is ChannelStatus.SETTLED)
        await client.stop()
        await server.stop()
        return low, high.txid_hex

    low, high_txid = asyncio.run(scenario())
    high = Transaction.parse(bytes.fromhex(node.rpc("getrawtransaction", high_txid)))
    assert node.rpc("getrawtransaction", high_txid, True)["confirmations"] >= 1
    assert high.outputs[0] == low.outputs[0]  # the client's change is untouched
    assert high.outputs[1].value < low.outputs[1].value  # the server paid the higher fee
    assert 10 * high.vsize <= low.outputs[1].value - high.outputs[1].value + (
        VALUE - sum(o.value for o in low.outputs))


def test_policy_defaults() -> None:
    assert WatchPolicy().forget_depth == 6


def test_channel_views_show_state_deadlines_and_confirmations(mem_sides: MemSides) -> None:

    async def scenario() -> None:
        server, client, channel = await open_channel(mem_sides, pays=2)
        (view,) = client.views()
        assert (view.status, view.contract_txid, view.paid) == ("open", channel.contract_txid,
                                                                 21_000)
        assert view.deadline == view.expiry == channel.record.contract.expiry  # refund time
        assert view.contract_confirmations == 0 and view.closing_txid is None
        (server_view,) = server.views()
        assert server_view.deadline == view.expiry - FAST.settle_margin
        await mine(mem_sides, 2)
        await until(lambda: client.views()[0].contract_confirmations == 2)
        settlement = await channel.close()
        await until(lambda: client.views()[0].closing_txid == settlement.txid_hex)
        await mine(mem_sides)
        await until(lambda: server.views() and server.views()[0].closing_confirmations == 1
                    and server.views()[0].status == "settled")
        await client.stop()
        await server.stop()

    asyncio.run(scenario())


def test_payments_wait_for_the_contract_to_confirm_when_asked(mem_sides: MemSides) -> None:

    async def scenario() -> None:
        server = mem_sides.server(min_confirmations=1)
        host, port = await server.listen()
        client = mem_sides.client()
        channel = await client.open(host, port, VALUE)  # the initial payment needs none
        held = asyncio.Event()
        until_confirmed = server.watcher.until_confirmed

        async def holding(contract_txid: str, confirmations: int) -> None:
            held.set()
            await until_confirmed(contract_txid, confirmations)

        server.watcher.until_confirmed = holding  # type: ignore[method-assign]
        paying = asyncio.create_task(channel.pay(5_000))
        await asyncio.wait_for(held.wait(), 30)  # the server holds the payment...
        assert not paying.done()  # ...until the contract confirms
        await mine(mem_sides)
        await asyncio.wait_for(paying, 30)
        await channel.pay(5_000)  # now at once
        await client.stop()
        await server.stop()

    asyncio.run(scenario())


def test_a_double_spent_contract_fails_the_channel_on_both_sides(mem_sides: MemSides) -> None:
    chain, wallet = mem_sides.chain, mem_sides.client_node.wallet

    async def scenario() -> str:
        server, client, channel = await open_channel(mem_sides, pays=1)
        txid = channel.contract_txid
        contract = Transaction.parse(channel.record.contract_tx)
        coin = contract.inputs[0].prevout
        # The client's wallet spends the contract's coin again, paying more: full RBF.
        spent = chain.prevout(coin)
        assert spent is not None
        again = wallet.sign(Transaction(2, (TxIn(coin, b"", 0xFFFFFFFD),), (
            TxOut(spent.value - 1_000_000, wallet.new_script()),)))
        assert chain.accept(again) is None
        await mine(mem_sides)
        await until(lambda: status(server, Role.SERVER, txid) is ChannelStatus.FAILED,
                    what="the server to see the double spend")
        await until(lambda: status(client, Role.CLIENT, txid) is ChannelStatus.FAILED,
                    what="the client to see the double spend")
        await mine(mem_sides, 2)
        await until(lambda: status(server, Role.SERVER, txid) is None, what="forgetting")
        await client.stop()
        await server.stop()
        return txid

    asyncio.run(scenario())
    (finished,) = mem_sides.client_events
    assert finished.status is ChannelStatus.FAILED and finished.client_amount == VALUE
    server_finished = [e for e in mem_sides.events if type(e).__name__ == "ChannelFinished"]
    assert len(server_finished) == 1
