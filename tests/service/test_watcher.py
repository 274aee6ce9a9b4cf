"""The autopilot's work per block follows the live channels it touches, not the rows stored
(on the in-process chain; ZMQ's mempool wake-ups on a real node)."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.service.watcher import SLICE
from regtest.node import RegtestNode, regtest_nodes
from regtest.stranger import failed_row
from regtest.waiting import until
from tests.service.conftest import FAST, MemSides, Sides

LEGACY_ROWS = 100


def test_dead_rows_are_not_reviewed_per_block_and_never_funded_rows_are_pruned(
        mem_sides: MemSides) -> None:
    """An older server kept a FAILED row per stranger's fake contract, loaded, parsed and
    reviewed at every block. Now blocks touch only live channels, and a row whose coins do
    not exist is discarded once that is `forget_depth` blocks old."""
    async def scenario() -> tuple[list[int], list[int], int, list[str], str]:
        server = mem_sides.server(review_interval=3600)  # reviews only at start and per block
        expiry = int(time.time()) + 86_400
        for _ in range(LEGACY_ROWS):
            server.store.put(failed_row(expiry))
        host, port = await server.listen()
        channel = await mem_sides.client().open(host, port, 500_000)
        per_block, reviewed = [], []
        for _ in range(FAST.forget_depth + 1):
            reviews = server.watcher.reviews
            await asyncio.to_thread(mem_sides.mine)
            await until(lambda seen=reviews: server.watcher.reviews > seen,  # type: ignore[misc]
                        what="the block's review")
            per_block.append(server.watcher.block_channels)
            reviewed.append(server.watcher.reviewed_channels)
            await channel.pay(1_000)
        before_review = len(server.store.channels())
        await server.watcher.review_all()  # the periodic review
        stored = [r.contract_txid for r in server.store.channels()]
        await server.stop()
        return per_block, reviewed, before_review, stored, channel.contract_txid

    per_block, reviewed, before_review, stored, honest = asyncio.run(scenario())
    # The first block confirms the honest contract; the later ones touch no channel, so
    # nothing is loaded for them (work follows what the block changed). A review never looks
    # at the dead rows (one may still look at the honest channel: it was touched or is new).
    assert per_block == [1] + [0] * FAST.forget_depth
    assert max(reviewed) <= 1
    assert before_review == LEGACY_ROWS + 1
    assert stored == [honest]


def test_a_block_touching_more_channels_than_a_slice_is_folded_into_every_one(
        mem_sides: MemSides) -> None:
    """The watcher loads and stores a block's channels SLICE at a time (a payment's commit
    then waits for one slice, not for the whole block): every channel the block touches is
    folded in, and the block is recorded as processed only with the last slice."""
    chain, wallet = mem_sides.chain, mem_sides.server_node.wallet
    outputs = mem_separate_outputs(mem_sides, 2 * SLICE + 1)
    expiry = int(time.time()) + 86_400
    records = [replace(row, status=ChannelStatus.OPEN,
                       contract=replace(row.contract, outpoint=output))
               for row, output in ((failed_row(expiry), o) for o in outputs)]

    async def scenario() -> tuple[list[ChainState], int, str | None]:
        server = mem_sides.server(review_interval=3600)
        server.store.put_many(records)
        server.store.put_chain_states(Role.SERVER, {r.contract_txid: ChainState(
            contract_height=chain.height) for r in records})
        await server.listen()
        wallet.release(tuple((o.txid_hex, o.index) for o in outputs))
        for output in outputs:
            mem_spend(mem_sides, output)
        mem_sides.mine()
        height = chain.height
        # the block is processed once its sync point is stored (with the last slice)
        await until(lambda: (server.store.get_meta("synced:server") or "").startswith(
            f"{height}:"), what="the block to be processed")
        states = [server.store.chain_state(Role.SERVER, r.contract_txid) for r in records]
        synced = server.store.get_meta("synced:server")
        await server.stop()
        return states, height, synced

    states, height, synced = asyncio.run(scenario())
    assert [s.spender_height for s in states] == [height] * len(records)
    assert synced is not None and synced.startswith(f"{height}:")


def separate_outputs(sides: Sides, count: int) -> list[OutPoint]:
    """`count` confirmed wallet outputs of the server's node, each in its own transaction
    (a channel is known by its contract's txid), locked so the wallet spends none."""
    node = sides.server_node
    txid = node.pay_in_block({node.new_address(): "0.0011" for _ in range(count)})
    funding = Transaction.from_hex(node.wallet_rpc("gettransaction", txid)["hex"])
    sides.sync()
    coins = [OutPoint(funding.txid, i) for i, out in enumerate(funding.outputs)
             if out.value == 110_000]
    outputs = [spend(node, coin, "0.001") for coin in coins]
    sides.mine()
    node.wallet_rpc("lockunspent", False, [{"txid": o.txid_hex, "vout": o.index}
                                           for o in outputs])
    return outputs


def mem_separate_outputs(sides: MemSides, count: int) -> list[OutPoint]:
    """As `separate_outputs`, on the in-process chain."""
    coins = sides.server_node.wallet.receive(*[110_000] * count)
    outputs = [mem_spend(sides, coin, 100_000) for coin in coins]
    sides.mine()
    sides.server_node.wallet.lock(tuple(outputs))
    return outputs


def mem_spend(sides: MemSides, coin: OutPoint, value: int = 90_000) -> OutPoint:
    """As `spend`, on the in-process chain (the rest of the coin is the fee)."""
    wallet = sides.server_node.wallet
    tx = wallet.sign(Transaction(2, (TxIn(coin, b"", 0xFFFFFFFD),), (
        TxOut(value, wallet.new_script()),)))
    assert sides.chain.accept(tx) is None
    return OutPoint(tx.txid, 0)


def spend(node: RegtestNode, coin: OutPoint, btc: str = "0.0009") -> OutPoint:
    """Spend `coin` to a new wallet address, paying `btc` (the rest is the fee); the new
    output."""
    raw = node.rpc("createrawtransaction", [{"txid": coin.txid_hex, "vout": coin.index}],
                   {node.new_address(): btc})
    signed = node.wallet_rpc("signrawtransactionwithwallet", raw)["hex"]
    return OutPoint.from_hex(node.rpc("sendrawtransaction", signed), 0)


def test_a_mempool_spend_of_a_watched_output_is_seen_at_once_with_zmq(tmp_path: Path) -> None:
    """A spend of a channel's contract output waiting in the mempool was seen only by the
    periodic review (or once mined). With ZMQ `rawtx`, the watcher matches each transaction
    entering the mempool against its index and reviews the channels it spends from at once
    (the review asks the node, which stays the source of truth)."""
    with regtest_nodes(1, zmq=True) as (node,):
        sides = Sides(tmp_path, server_node=node, client_node=node)
        (output,) = separate_outputs(sides, 1)
        row = failed_row(int(time.time()) + 86_400)
        record = replace(row, status=ChannelStatus.OPEN,
                         contract=replace(row.contract, outpoint=output))

        async def scenario() -> tuple[bytes, bytes | None]:
            server = sides.server(review_interval=3600, poll_interval=60,
                                  zmq_endpoint=node.zmq_endpoint)
            server.store.put(record)
            server.store.put_chain_state(Role.SERVER, record.contract_txid,
                                         ChainState(contract_height=node.tip()[0]))
            await server.listen()
            monitor = server.watcher.monitor
            assert monitor is not None
            # A block seen long before the next poll: the ZMQ subscription is live.
            await asyncio.to_thread(sides.mine)
            height = node.tip()[0]
            await until(lambda: monitor.tip and monitor.tip.height == height, what="ZMQ")
            node.wallet_rpc("lockunspent", True, [{"txid": output.txid_hex,
                                                   "vout": output.index}])
            spent = await asyncio.to_thread(spend, node, output)
            raw = bytes.fromhex(node.rpc("getrawtransaction", spent.txid_hex))
            await until(lambda: server.store.chain_state(
                Role.SERVER, record.contract_txid).spender == raw, what="the mempool spend")
            state = server.store.chain_state(Role.SERVER, record.contract_txid)
            await server.stop()
            return raw, state.spender

        raw, spender = asyncio.run(scenario())
        assert spender == raw


def test_a_failed_review_says_when_the_next_one_really_comes(
        mem_sides: MemSides, caplog: pytest.LogCaptureFixture) -> None:
    """Seen: during a node outage every periodic review logged "again in 600 s" (the backoff)
    although the next periodic review came within review_interval."""
    async def scenario() -> list[float]:
        server = mem_sides.server(review_interval=300)
        await server.start()
        mem_sides.server_node.down = True
        for _ in range(9):  # the backoff doubles from 5 s up to 600 s
            await server.watcher.review_all()
        await server.stop()
        return [float(m.group(1)) for r in caplog.records
                if (m := re.search(r"review failed .*; again in (\d+) s", r.getMessage()))]

    announced = asyncio.run(scenario())
    assert len(announced) >= 9
    assert announced[:2] == [5.0, 10.0]  # the backoff while it is the sooner
    assert 160 in announced and max(announced) <= 300  # then the periodic review, not 600 s
