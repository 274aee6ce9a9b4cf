"""Re-anchoring through the services (issue 23, docs/design/reanchoring.md) on real regtest
nodes, with the policy enabled on both sides (it is off by default): the server quotes with its
node's fee estimate and wallet, checks R with its node, stores it under the channel's lease,
broadcasts it and sends it back; payments go on meanwhile, signed and stored on both contracts.
What is not built yet (the watcher's promotion, top-up coins of a refused R) is not run here."""

from __future__ import annotations

import asyncio
import os

import pytest

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.effects import Send, StorePayment
from bitcoind_paychan.channel.records import ChannelRecord, Role
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.errors import ChannelFailed, ReanchorRefused
from bitcoind_paychan.node import to_sat
from bitcoind_paychan.service.client import Channel, PaymentClient
from bitcoind_paychan.service.server import ServerManager
from bitcoind_paychan.transport.base import encode
from bitcoind_paychan.wire import pb
from regtest.waiting import until
from tests.service.carried import Dialer, Requests
from tests.service.conftest import Sides

T = pb.TwoWayChannelMessage

VALUE, DAY = 1_000_000, 24 * 3600


def reanchored(sides: Sides, before: list[int], after: list[int], top_up: int = 0,
               time_window: int = 0, version: int = 3
               ) -> tuple[ChannelRecord, ChannelRecord]:
    """Open a channel of `version` with re-anchoring enabled on both sides, pay `before`,
    re-anchor, pay `after`: (the record `reanchor` returned, the client's record at the end)."""
    async def scenario() -> tuple[ChannelRecord, ChannelRecord]:
        server = sides.server(ServerPolicy(reanchoring=True))
        host, port = await server.listen()
        client = sides.client(policy=ClientPolicy(VALUE, reanchoring=True))
        channel = await client.open(host, port, VALUE, version=version)
        for amount in before:
            await channel.pay(amount)
        signed = await channel.reanchor(top_up, time_window)
        for amount in after:  # the stream goes on, on both contracts
            await channel.pay(amount)
        record = channel.record
        await server.stop()
        return signed, record

    return asyncio.run(scenario())


@pytest.mark.parametrize("version", [3, 4])
def test_a_renewal_with_payout_through_the_services(sides: Sides, version: int) -> None:
    signed, client_record = reanchored(sides, [10_000] * 5, [1_000] * 3, time_window=2 * DAY,
                                       version=version)
    pending = signed.pending
    assert pending is not None and pending.complete
    r = Transaction.parse(pending.tx)
    assert r.txid_hex in sides.server_node.rpc("getrawmempool")  # broadcast after it was stored
    stored = sides.server().store.get(Role.SERVER, signed.channel_id)
    assert stored is not None and stored.pending is not None and stored.pending.complete
    assert stored.pending.tx == pending.tx
    paid = 1_000 + 5 * 10_000 + 3 * 1_000
    assert stored.paid == paid == client_record.paid
    stored.contract.check_payment(stored.change, stored.signature)  # the latest on C
    stored.pending.contract.check_payment(stored.pending.change, stored.pending.signature)
    assert stored.pending.change == stored.change + stored.pending.offset(stored.contract)
    assert pending.payout == 51_000  # what the server had acknowledged when it quoted
    sides.mine(1)
    payout = r.outputs[1]
    coins = {(c["txid"], c["vout"]): to_sat(c["amount"])
             for c in sides.server_node.wallet_rpc("listunspent", 0)}
    assert coins[(r.txid_hex, 1)] == payout.value  # the server's wallet holds its payout
    fee = VALUE - r.outputs[0].value - payout.value
    assert 0 < fee < 2_000 and len(r.outputs) == 2 and len(r.inputs) == 1
    assert payout.value < pending.payout  # the server pays its own output's fee part
    # The client's money on C' is what it had on C, less the rest of the fee.
    assert stored.pending.change == client_record.change - (fee - (pending.payout - payout.value))


@pytest.mark.parametrize("version", [3, 4])
def test_a_top_up_funded_by_the_clients_wallet(sides: Sides, version: int) -> None:
    """v4: R is signed over the wallet coins' spent outputs (SIGHASH_DEFAULT), which the
    client's service reads from its node: the server's node takes R and mines it."""
    signed, client_record = reanchored(sides, [10_000], [2_000], top_up=300_000,
                                       version=version)
    pending = signed.pending
    assert pending is not None and pending.complete
    r = Transaction.parse(pending.tx)
    assert len(r.inputs) >= 2  # the contract and the client's coins
    assert r.txid_hex in sides.server_node.rpc("getrawmempool")  # the server broadcast it
    # C' holds C's value, the top-up and no payout less: the server quoted what it had
    # acknowledged (11,000 sat) as a payout, paid from C
    payout = pending.payout
    assert payout == 11_000 and r.outputs[0].value == VALUE + 300_000 - payout
    stored = sides.server().store.get(Role.SERVER, signed.channel_id)
    assert stored is not None and stored.pending is not None
    assert stored.pending.change == client_record.change + 300_000  # the offset: the top-up
    stored.pending.contract.check_payment(stored.pending.change, stored.pending.signature)
    sides.mine(1)
    assert sides.server_node.rpc("getrawtransaction", r.txid_hex, True)["confirmations"] == 1


async def carried_channel(sides: Sides) -> tuple[ServerManager, PaymentClient, Channel,
                                                Requests]:
    """A v3 channel with re-anchoring enabled, on a connection the test carries (its frames
    held from now on: the test delivers them), paid 1,000 + 10,000 sat."""
    manager = ServerManager(sides.server_ports(), sides.store("server"),
                            ServerPolicy(reanchoring=True), on_event=sides.events.append,
                            poll_interval=sides.poll_interval)
    await manager.start()
    dial = Dialer(manager)
    client = sides.client(dial=dial, policy=ClientPolicy(VALUE, reanchoring=True))
    channel = await client.open_channel("app://shop", VALUE, version=3)
    await channel.pay(10_000)
    carried = dial.connections[-1]
    carried.hold = True
    return manager, client, channel, carried


def test_a_payment_pipelined_behind_the_signed_reanchor_is_stored_on_both_contracts(
        sides: Sides) -> None:
    """REANCHOR_SIGNED and a payment signed on both contracts arrive in one batch: the
    server checks R with its node, stores it (after the payment the writer already had),
    broadcasts and acknowledges it, then acknowledges the payment, whose two signatures are
    both stored with R. Frames are held and delivered by the test: no timing."""
    async def scenario() -> tuple[list[int], ChannelRecord, ChannelRecord]:
        manager, client, channel, carried = await carried_channel(sides)
        reanchoring = asyncio.ensure_future(channel.reanchor(time_window=2 * DAY))
        await until(lambda: carried.held, what="REANCHOR_PROPOSE")
        for reply in await carried.deliver(carried.held.pop()):
            channel.receive(reply)  # the terms: the client signs and stores R
        await until(lambda: carried.held, what="REANCHOR_SIGNED")
        signed_frame = carried.held.pop()
        effects = channel.machine.pay(3_000)  # signed on both contracts, behind it
        for effect in effects:
            if isinstance(effect, StorePayment):
                await client.payments.record_payment(effect.record, effect.amount)
        payment = [e.message for e in effects if isinstance(e, Send)]
        carried.replies.frames = []
        await carried.connection.receive_many([signed_frame, *encode(payment)])
        replies = [int(T.FromString(f).type) for f in carried.replies.frames]
        for reply in carried.replies.frames:
            channel.receive(reply)
        signed = await reanchoring
        stored = manager.store.get(Role.SERVER, signed.channel_id)
        assert stored is not None
        await client.stop()
        await manager.stop()
        return replies, signed, stored

    replies, signed, stored = asyncio.run(scenario())
    assert replies == [T.REANCHOR_ACK, T.PAYMENT_ACK]  # R stored and sent first
    assert stored.paid == 1_000 + 10_000 + 3_000
    assert stored.pending is not None and stored.pending.complete
    assert signed.pending is not None and stored.pending.tx == signed.pending.tx
    stored.contract.check_payment(stored.change, stored.signature)
    stored.pending.contract.check_payment(stored.pending.change, stored.pending.signature)
    assert stored.pending.change == stored.change + stored.pending.offset(stored.contract)
    assert Transaction.parse(stored.pending.tx).txid_hex in sides.server_node.rpc(
        "getrawmempool")


def test_a_payout_script_not_quoted_on_the_connection_must_be_the_servers(
        sides: Sides) -> None:
    """REANCHOR_SIGNED names its payout script; one this connection did not quote is taken
    only if the server's wallet owns it: a client that routes the payout elsewhere (here: terms
    altered on their way) is refused, nothing is stored, and the channel goes on."""
    async def scenario() -> tuple[list[int], ChannelRecord]:
        manager, client, channel, carried = await carried_channel(sides)
        hijack = asyncio.ensure_future(channel.reanchor(time_window=2 * DAY))
        await until(lambda: carried.held, what="REANCHOR_PROPOSE")
        (terms,) = [T.FromString(f) for f in await carried.deliver(carried.held.pop())]
        terms.reanchor_terms.payout_script = b"\x00\x14" + os.urandom(20)  # not the server's
        channel.receive(terms)
        await until(lambda: carried.held, what="REANCHOR_SIGNED")
        refused = [int(T.FromString(f).type) for f in await carried.deliver(carried.held.pop())]
        for reply in carried.replies.frames:
            channel.receive(reply)
        with pytest.raises(ReanchorRefused, match="not the server's wallet's"):
            await hijack
        assert channel.record.pending is not None  # the refused R, kept until it is dead
        carried.hold = False
        await channel.pay(1_000)  # the channel goes on, on its contract
        await client.stop()
        await manager.stop()
        return refused, channel.record

    refused, record = asyncio.run(scenario())
    assert refused == [T.REANCHOR_REFUSED]
    stored = sides.server().store.get(Role.SERVER, record.channel_id)
    assert stored is not None and stored.pending is None  # nothing stored, nothing broadcast
    assert stored.paid == 1_000 + 10_000 + 1_000


def test_a_resumed_client_sends_its_r_again_and_the_server_takes_its_own_script(
        sides: Sides) -> None:
    """The server's terms, then the connection drops before R reaches it: the resumed client
    sends R again on a connection that quoted nothing; its payout script is the server's
    wallet's, so R is checked, stored, broadcast and acknowledged."""
    async def scenario() -> ChannelRecord:
        manager, client, channel, carried = await carried_channel(sides)
        dropped = asyncio.ensure_future(channel.reanchor(time_window=2 * DAY))
        await until(lambda: carried.held, what="REANCHOR_PROPOSE")
        for reply in await carried.deliver(carried.held.pop()):
            channel.receive(reply)
        await until(lambda: carried.held, what="REANCHOR_SIGNED")
        carried.held.clear()  # lost with the connection
        await carried.close()
        with pytest.raises(ChannelFailed):
            await dropped
        before = manager.store.get(Role.SERVER, channel.record.channel_id)
        assert before is not None and before.pending is None  # the server never saw R
        await client.open_channel("app://shop", VALUE, version=3)  # resumes, sends R again
        stored = manager.store.get(Role.SERVER, channel.record.channel_id)
        assert stored is not None
        await client.stop()
        await manager.stop()
        return stored

    stored = asyncio.run(scenario())
    assert stored.pending is not None and stored.pending.complete
    assert Transaction.parse(stored.pending.tx).txid_hex in sides.server_node.rpc(
        "getrawmempool")
