"""A re-anchored channel after R is signed (issue 23, docs/design/reanchoring.md 4, 5, 7) on
real regtest nodes: the channel keeps its id across generations, the server's watcher
promotes it once R confirms and tells a live connection (REANCHOR_LOCKED), a client that
missed it is told on its resume, and the channel is settled on its new contract."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import pytest

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.errors import ChannelFailed, ReanchorRefused, StoreError
from bitcoind_paychan.service.client import Channel, PaymentClient
from bitcoind_paychan.service.server import PaymentServer, ServerManager
from bitcoind_paychan.store import ChannelStore, SQLiteStore
from bitcoind_paychan.store.base import Payment
from bitcoind_paychan.store.credit import PaymentTake
from bitcoind_paychan.wire import pb
from regtest.waiting import until
from tests.service.carried import Dialer
from tests.service.conftest import FAST, MemSides, Sides
from tests.service.test_reanchor_service import carried_channel

T = pb.TwoWayChannelMessage

VALUE, DAY = 1_000_000, 24 * 3600


def generation(store: ChannelStore, role: Role, channel_id: str) -> int:
    record = store.get(role, channel_id)
    return record.generation if record is not None else -1


async def reanchored_channel(sides: Sides, top_up: int = 0
                             ) -> tuple[PaymentServer, PaymentClient, Channel, ChannelRecord]:
    """A v3 channel paid 1,000 + 10,000 sat and re-anchored (renewed to two days, the
    server's payout of what it acknowledged, `top_up`): R complete, broadcast, unconfirmed."""
    server = sides.server(ServerPolicy(reanchoring=True))
    host, port = await server.listen()
    client = sides.client(policy=ClientPolicy(VALUE, reanchoring=True))
    channel = await client.open(host, port, VALUE, version=3)
    await channel.pay(10_000)
    signed = await channel.reanchor(top_up, 2 * DAY)
    return server, client, channel, signed


def test_promotion_on_a_live_connection_and_settlement_of_the_new_contract(
        sides: Sides) -> None:
    """R confirms: the server's watcher promotes the stored channel (generation 1, the old
    one kept in `generations`) and tells the live connection; the client, still signing on
    both contracts, moves on REANCHOR_LOCKED; payments then go on the new contract alone, and
    the channel's settlement spends it."""
    async def scenario() -> tuple[ChannelRecord, ChannelRecord, ChannelRecord, Transaction,
                                  list[int]]:
        server, client, channel, signed = await reanchored_channel(sides)
        channel_id = signed.channel_id
        await channel.pay(2_000)  # on both contracts
        sides.mine(1)
        await until(lambda: generation(server.store, Role.SERVER, channel_id) == 1,
                    what="the server's promotion")
        await channel.pay(3_000)  # signed on both, crossing REANCHOR_LOCKED
        assert channel.record.generation == 1 and channel.record.pending is None
        await channel.pay(4_000)  # on the new contract alone
        client_record = channel.record
        server_record = server.store.get(Role.SERVER, channel_id)
        assert server_record is not None
        stored_client = client.store.get(Role.CLIENT, channel_id)
        assert stored_client is not None
        generations = [g.generation for g in server.store.generations(Role.SERVER, channel_id)]
        settlement = await channel.close()
        await client.stop()
        await server.stop()
        return client_record, stored_client, server_record, settlement, generations

    client_record, stored_client, server_record, settlement, generations = asyncio.run(
        scenario())
    assert generations == [0]
    assert server_record.generation == stored_client.generation == 1
    assert server_record.contract_txid == client_record.contract_txid != server_record.channel_id
    assert server_record.change == stored_client.change == client_record.change
    server_record.contract.check_payment(server_record.change, server_record.signature)
    assert settlement.inputs[0].prevout == server_record.contract.outpoint  # C' is settled
    sides.mine(1)
    assert sides.server_node.rpc("getrawtransaction", settlement.txid_hex, True)[
        "confirmations"] == 1


def test_a_client_that_missed_the_promotion_is_told_on_its_resume(sides: Sides) -> None:
    """The client hangs up while R is unconfirmed; the server promotes with no connection
    (under the channel's lease). The client resumes naming the channel's id with its record
    of the old generation: the server opens it, takes its payment re-sent on both contracts
    by its signature on the new one, and says REANCHOR_LOCKED; the client moves and pays on."""
    async def scenario() -> tuple[ChannelRecord, ChannelRecord]:
        server, client, channel, signed = await reanchored_channel(sides)
        channel_id = signed.channel_id
        await channel.pay(2_000)
        await channel.disconnect()
        sides.mine(1)
        await until(lambda: generation(server.store, Role.SERVER, channel_id) == 1,
                    what="the server's promotion")
        assert generation(client.store, Role.CLIENT, channel_id) == 0  # FAST: 2 blocks
        resumed = await client.resume(channel_id)
        await resumed.pay(5_000)
        client_record = resumed.record
        server_record = server.store.get(Role.SERVER, channel_id)
        assert server_record is not None
        await client.stop()
        await server.stop()
        return client_record, server_record

    client_record, server_record = asyncio.run(scenario())
    assert client_record.generation == server_record.generation == 1
    assert client_record.change == server_record.change
    assert server_record.paid == client_record.paid
    assert server_record.status is ChannelStatus.OPEN
    server_record.contract.check_payment(server_record.change, server_record.signature)


def fresh_wallet(sides: Sides, *btc: str) -> str:
    """A new wallet on the client's node holding coins of `btc` each (mined at once), which
    the client's services use from now on."""
    name = f"topup-{os.urandom(4).hex()}"
    sides.client_node.rpc("createwallet", name)
    sides.client_wallet = name
    fund(sides, name, *btc)
    return name


def fund(sides: Sides, wallet: str, *btc: str) -> None:
    addresses = [sides.client_node.rpc("getnewaddress", wallet=wallet) for _ in btc]
    sides.server_node.pay_in_block(dict(zip(addresses, btc, strict=True)))
    sides.sync()


def double_spend(sides: Sides, wallet: str, outpoint: tuple[str, int]) -> str:
    """The client's wallet spends `outpoint` back to itself, mined at once in a block of its
    own (the mempool holds R, which spends it too)."""
    txid, vout = outpoint
    coin = sides.client_node.rpc("gettxout", txid, vout, False)
    value = int(Decimal(str(coin["value"])) * 100_000_000) - 5_000
    address = sides.client_node.rpc("getnewaddress", wallet=wallet)
    draft = sides.client_node.rpc("createrawtransaction", [{"txid": txid, "vout": vout}],
                                  {address: Decimal(value) / 100_000_000}, wallet=wallet)
    signed = sides.client_node.rpc("signrawtransactionwithwallet", draft, wallet=wallet)
    assert signed["complete"]
    sides.server_node.mine_tx(signed["hex"])
    sides.sync()
    return str(sides.server_node.rpc("decoderawtransaction", signed["hex"])["txid"])


def test_a_top_up_input_double_spent_settles_the_contract_and_releases_the_coins(
        sides: Sides) -> None:
    """Rule 1 and 3: while R is unconfirmed the client spends one of its top-up coins
    elsewhere (mined). R can never confirm: the server's watcher settles the contract at
    once with the latest payment on it (every one acknowledged meanwhile was stored with its
    signature there), and the client's watcher releases R's other wallet coins."""
    wallet = fresh_wallet(sides, "0.011")  # the contract's coin

    async def scenario() -> tuple[Transaction, ChannelRecord, list[dict[str, object]]]:
        server = sides.server(ServerPolicy(reanchoring=True))
        host, port = await server.listen()
        client = sides.client(policy=ClientPolicy(VALUE, reanchoring=True))
        channel = await client.open(host, port, VALUE, version=3)
        await channel.pay(10_000)
        await asyncio.to_thread(fund, sides, wallet, "0.004", "0.004")  # top-up coins
        signed = await channel.reanchor(600_000, 2 * DAY)
        assert signed.pending is not None
        r = Transaction.parse(signed.pending.tx)
        assert len(r.inputs) >= 3  # the contract and at least two coins of ours
        for _ in range(3):
            await channel.pay(1_000)  # on both contracts
        spent = (r.inputs[1].prevout.txid_hex, r.inputs[1].prevout.index)
        await asyncio.to_thread(double_spend, sides, wallet, spent)
        channel_id = signed.channel_id

        def settled() -> ChannelRecord | None:
            record = server.store.get(Role.SERVER, channel_id)
            return record if record and record.status is ChannelStatus.CLOSING else None

        record = await until(settled, what="the server's settlement of the contract")
        rest = [(i.prevout.txid_hex, i.prevout.index) for i in r.inputs[2:]]

        def released() -> bool:
            locked = {(c["txid"], c["vout"]) for c in sides.client_node.rpc(
                "listlockunspent", wallet=wallet)}
            return not locked & set(rest)

        await until(released, what="R's other coins released")
        coins = sides.client_node.rpc("listunspent", 0, 9999999, wallet=wallet)
        await client.stop()
        await server.stop()
        assert record.settlement_tx is not None
        return Transaction.parse(record.settlement_tx), record, [
            c for c in coins if (c["txid"], c["vout"]) in set(rest)]

    settlement, record, coins = asyncio.run(scenario())
    assert settlement.inputs[0].prevout == record.contract.outpoint  # C, not C'
    assert record.generation == 0 and record.paid == 1_000 + 10_000 + 3 * 1_000
    assert settlement.outputs[0].value == record.change  # the latest payment on C
    record.contract.check_payment(record.change, record.signature)
    assert coins  # R's other coins are the client's to spend again


def test_the_contracts_deadline_before_r_confirms_settles_it_replacing_r(
        one_node: Sides) -> None:
    """Rule 1: R (a renewal with a payout, no top-up) sits unconfirmed when a block's time
    reaches the contract's settle deadline: the server settles the contract in time, at a
    rate that replaces R (its input 0 signals RBF), with the latest payment on it."""
    sides, node = one_node, one_node.server_node

    async def scenario() -> tuple[ChannelRecord, Transaction, list[str]]:
        server, client, channel, signed = await reanchored_channel(sides)
        await channel.pay(2_000)  # on both contracts
        assert signed.pending is not None
        r_txid = Transaction.parse(signed.pending.tx).txid_hex
        assert r_txid in node.rpc("getrawmempool")
        deadline = signed.contract.expiry - server.watcher.policy.settle_margin
        node.set_mocktime(deadline + 1)
        node.rpc("generateblock", node.new_address(), [])  # R stays in the mempool

        def settled() -> ChannelRecord | None:
            record = server.store.get(Role.SERVER, signed.channel_id)
            return record if record and record.status is ChannelStatus.CLOSING else None

        record = await until(settled, what="the server's settlement at the deadline")
        assert record.settlement_tx is not None
        settlement = Transaction.parse(record.settlement_tx)
        await until(lambda: settlement.txid_hex in node.rpc("getrawmempool"),
                    what="the settlement replacing R")
        mempool = list(node.rpc("getrawmempool"))
        await client.stop()
        await server.stop()
        return record, settlement, [r_txid, *mempool]

    record, settlement, (r_txid, *mempool) = asyncio.run(scenario())
    assert r_txid not in mempool  # replaced
    assert settlement.inputs[0].prevout == record.contract.outpoint  # C
    assert record.paid == 1_000 + 10_000 + 2_000 and record.generation == 0
    assert settlement.outputs[0].value == record.change
    node.mine(1)
    assert node.rpc("getrawtransaction", settlement.txid_hex, True)["confirmations"] == 1


def test_r_confirming_after_the_settlement_was_decided_settles_the_next_contract(
        sides: Sides) -> None:
    """Rule 1: the server settled the contract (its settlement replacing R in the mempool),
    yet R is what a miner put in a block. The channel stays CLOSING (a decided settlement is
    final) and moves to the next contract, where the server settles at once with the
    latest payment carried there, to the same payout script."""
    async def scenario() -> tuple[ChannelRecord, ChannelRecord, Transaction]:
        server, client, channel, signed = await reanchored_channel(sides)
        await channel.pay(2_000)
        assert signed.pending is not None
        r = Transaction.parse(signed.pending.tx)
        first = await server.settle(signed.channel_id)  # replaces R in the mempool
        assert first.inputs[0].prevout == signed.contract.outpoint
        decided = server.store.get(Role.SERVER, signed.channel_id)
        assert decided is not None and decided.status is ChannelStatus.CLOSING
        node = sides.server_node  # R (after its contract) wins after all:
        await asyncio.to_thread(node.rpc, "generateblock", node.new_address(),
                                [signed.contract_tx.hex(), r.hex()])
        await asyncio.to_thread(sides.sync)
        await until(lambda: generation(server.store, Role.SERVER, signed.channel_id) == 1,
                    what="the channel moved to the next contract")
        moved = server.store.get(Role.SERVER, signed.channel_id)
        assert moved is not None and moved.settlement_tx is not None
        settlement = Transaction.parse(moved.settlement_tx)
        await until(lambda: settlement.txid_hex in sides.server_node.rpc("getrawmempool"),
                    what="the settlement of the next contract broadcast")
        await client.stop()
        await server.stop()
        return decided, moved, settlement

    decided, moved, settlement = asyncio.run(scenario())
    assert moved.status is ChannelStatus.CLOSING and moved.generation == 1
    assert decided.pending is not None
    assert settlement.inputs[0].prevout == moved.contract.outpoint  # C' = R:0
    assert moved.change == decided.pending.change  # the latest payment, carried
    assert settlement.outputs[0].value == moved.change
    old = Transaction.parse(decided.settlement_tx or b"")
    assert settlement.outputs[-1].script_pubkey == old.outputs[-1].script_pubkey
    sides.mine(1)
    assert sides.server_node.rpc("getrawtransaction", settlement.txid_hex, True)[
        "confirmations"] == 1


def test_r_reorged_out_after_the_promotion_is_broadcast_again_and_the_channel_goes_on(
        one_node: Sides) -> None:
    """Rule 1: the block holding R (and its contract) is reorged out after the promotion. The
    watcher sees the new contract unconfirmed again, keeps the channel on it (promotion is
    done at the depth payments on a new contract already trust) and sends R again; payments
    go on, R confirms in a new block, and the channel settles on the new contract."""
    sides, node = one_node, one_node.server_node

    async def scenario() -> tuple[list[int], ChannelRecord, Transaction]:
        server, client, channel, signed = await reanchored_channel(sides)
        channel_id = signed.channel_id
        assert signed.pending is not None
        r_txid = Transaction.parse(signed.pending.tx).txid_hex
        (block,) = await asyncio.to_thread(node.mine, 1)
        await until(lambda: generation(server.store, Role.SERVER, channel_id) == 1,
                    what="the server's promotion")
        await channel.pay(2_000)  # REANCHOR_LOCKED reaches the client
        heights = [server.watcher.chain_state(channel_id).contract_height]
        await asyncio.to_thread(node.invalidate, block)  # R and its contract unconfirmed
        await until(lambda: server.watcher.chain_state(channel_id).contract_height == 0,
                    what="R's confirmation undone")
        heights.append(generation(server.store, Role.SERVER, channel_id))
        await until(lambda: r_txid in node.rpc("getrawmempool"), what="R in the mempool")
        await channel.pay(3_000)  # on the new contract
        node.rpc("generateblock", node.new_address(), [signed.contract_tx.hex(),
                                                       bytes(signed.pending.tx).hex()])
        await until(lambda: server.watcher.chain_state(channel_id).contract_height > 0,
                    what="R confirmed again")
        settlement = await channel.close()
        record = server.store.get(Role.SERVER, channel_id)
        assert record is not None
        await client.stop()
        await server.stop()
        return heights, record, settlement

    (height, generation_after), record, settlement = asyncio.run(scenario())
    assert height > 0 and generation_after == 1  # never moved back to the old contract
    assert record.generation == 1 and record.contract_txid != record.channel_id
    assert settlement.inputs[0].prevout == record.contract.outpoint
    assert settlement.outputs[0].value == record.change
    node.mine(1)
    assert node.rpc("getrawtransaction", settlement.txid_hex, True)["confirmations"] == 1


def test_a_refused_top_up_gives_the_clients_coins_back(sides: Sides) -> None:
    """Rule 3: the server refuses a signed top-up R (here: its payout script was altered on
    the way, so it is not the server's). The client cannot know the server will never
    complete R, so it kills R: one of R's wallet coins is spent back to its wallet (the
    node takes it: nothing else spends that coin), and the others are released at once."""
    wallet = fresh_wallet(sides, "0.011")

    async def scenario() -> tuple[Transaction, list[tuple[str, int]], set[tuple[str, int]]]:
        manager, client, channel, carried = await carried_channel(sides)
        await asyncio.to_thread(fund, sides, wallet, "0.004", "0.004")
        refused = asyncio.ensure_future(channel.reanchor(600_000, 2 * DAY))
        await until(lambda: carried.held, what="REANCHOR_PROPOSE")
        (terms,) = [T.FromString(f) for f in await carried.deliver(carried.held.pop())]
        terms.reanchor_terms.payout_script = b"\x00\x14" + os.urandom(20)  # not the server's
        channel.receive(terms)
        await until(lambda: carried.held, what="REANCHOR_SIGNED")
        await carried.deliver(carried.held.pop())
        for reply in carried.replies.frames:
            channel.receive(reply)
        with pytest.raises(ReanchorRefused):
            await refused
        pending = channel.record.pending
        assert pending is not None and pending.refused
        r = Transaction.parse(pending.tx)
        coins = [(i.prevout.txid_hex, i.prevout.index) for i in r.inputs[1:]]
        locked = {(c["txid"], c["vout"]) for c in sides.client_node.rpc(
            "listlockunspent", wallet=wallet)}
        await client.stop()
        await manager.stop()
        return r, coins, locked

    r, coins, locked = asyncio.run(scenario())
    assert len(coins) >= 2 and not locked & set(coins)  # none stays locked
    spender = sides.client_node.rpc("gettxspendingprevout",
                                    [{"txid": coins[0][0], "vout": coins[0][1]}])[0]
    reclaim = spender["spendingtxid"]
    assert reclaim != r.txid_hex  # spent back to the client's wallet: R is dead
    assert sides.client_node.rpc("gettransaction", reclaim, wallet=wallet)["amount"] == 0
    assert sides.client_node.rpc("testmempoolaccept", [r.hex()])[0]["allowed"] is False


class HeldCommits(SQLiteStore):
    """A server store whose next group commit of payments waits for `release`."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.holding, self.entered, self.release = False, threading.Event(), threading.Event()

    def record_payments(self, batch: Sequence[Payment],
                        takes: Sequence[PaymentTake | None] = ()) -> list[StoreError | None]:
        if self.holding:
            self.holding = False
            self.entered.set()
            self.release.wait(30)
        return super().record_payments(batch, takes)


def test_the_promotion_takes_its_place_among_payments_being_stored(
        mem_sides: MemSides) -> None:
    """The race between a promotion and the payments of its connection, driven by holding
    the server's group commit: a payment on both contracts is being committed when the
    watcher promotes; the promotion is queued behind it (and the machine moves at once),
    and the payment the client sends next (still on both contracts: it has not heard
    REANCHOR_LOCKED) is counted on the new contract and written after the promotion.
    Nothing is refused or lost."""
    store = HeldCommits(mem_sides.tmp / "held.db")

    async def scenario() -> tuple[ChannelRecord, ChannelRecord, int]:
        server = PaymentServer(mem_sides.server_ports(), store, ServerPolicy(reanchoring=True),
                               autopilot=FAST, poll_interval=0.05, review_interval=0.5)
        host, port = await server.listen()
        client = mem_sides.client(policy=ClientPolicy(VALUE, reanchoring=True))
        channel = await client.open(host, port, VALUE, version=3)
        mem_sides.mine(1)
        await channel.pay(10_000)
        await channel.reanchor(0, 2 * DAY)
        (connection,) = server._connections
        store.holding = True
        first = asyncio.ensure_future(channel.pay(1_000))  # on both; its commit held
        await asyncio.to_thread(store.entered.wait, 30)
        mem_sides.mine(1)  # R confirmed: the watcher promotes, queued behind `first`
        machine = connection.machine
        await until(lambda: machine.record is not None and machine.record.generation == 1,
                    what="the promotion queued, the machine moved")
        # The connection handles its next frame once the held one is answered: the
        # client's next payment (still on both contracts) reaches the moved machine.
        second = asyncio.ensure_future(channel.pay(2_000))
        store.release.set()
        await asyncio.gather(first, second)
        await channel.pay(3_000)  # REANCHOR_LOCKED read by now: on the new contract alone
        stored = store.get(Role.SERVER, channel.channel_id)
        assert stored is not None
        logged = len(store.payments(Role.SERVER, channel.channel_id))
        record = channel.record
        await client.stop()
        await server.stop()
        return stored, record, logged

    stored, record, logged = asyncio.run(scenario())
    assert stored.generation == record.generation == 1
    assert stored.change == record.change and stored.signature == record.signature
    stored.contract.check_payment(stored.change, stored.signature)
    assert logged == 1 + 1 + 3  # the opening, 10,000, then the three: none refused


def test_a_resume_after_a_promotion_with_the_next_reanchor_signed_is_not_mistaken(
        mem_sides: MemSides) -> None:
    """A channel re-anchored once (generation 1); the client signs a second R, whose
    REANCHOR_SIGNED is lost with the connection. Its resume re-sends its payment on both of
    its contracts (the current one and the second R's): the server, which told it
    REANCHOR_LOCKED for the first R, must count that payment on the current contract (it
    verifies there: the client is not behind), then take the re-sent second R."""
    async def scenario() -> ChannelRecord:
        manager = ServerManager(mem_sides.server_ports(), mem_sides.store("server"),
                                ServerPolicy(reanchoring=True), autopilot=FAST,
                                poll_interval=0.05, review_interval=0.5)
        await manager.start()
        dial = Dialer(manager)
        client = mem_sides.client(dial=dial, policy=ClientPolicy(VALUE, reanchoring=True))
        channel = await client.open_channel("app://shop", VALUE, version=3)
        await channel.pay(10_000)
        await channel.reanchor(0, 2 * DAY)
        mem_sides.mine(1)
        await until(lambda: generation(manager.store, Role.SERVER, channel.channel_id) == 1,
                    what="the first promotion")
        await channel.pay(1_000)  # on both, counted on the new contract
        # A carried (request/response) connection cannot bring the server's unasked
        # REANCHOR_LOCKED: the client hears it on its resume.
        await channel.disconnect()
        channel = await client.resume(channel.channel_id)
        assert channel.record.generation == 1
        carried = dial.connections[-1]
        carried.hold = True
        lost = asyncio.ensure_future(channel.reanchor(0, 3 * DAY))
        await until(lambda: carried.held, what="REANCHOR_PROPOSE")
        for reply in await carried.deliver(carried.held.pop()):
            channel.receive(reply)  # the terms: the client signs and stores the second R
        await until(lambda: carried.held, what="REANCHOR_SIGNED")
        carried.held.clear()  # lost with the connection
        await carried.close()
        with pytest.raises(ChannelFailed):
            await lost
        resumed = await client.resume(channel.channel_id)  # re-sends both
        await resumed.pay(2_000)
        stored = manager.store.get(Role.SERVER, channel.channel_id)
        assert stored is not None
        await client.stop()
        await manager.stop()
        return stored

    stored = asyncio.run(scenario())
    assert stored.generation == 1
    assert stored.pending is not None and stored.pending.complete  # the second R, taken
    stored.contract.check_payment(stored.change, stored.signature)
    stored.pending.contract.check_payment(stored.pending.change, stored.pending.signature)
