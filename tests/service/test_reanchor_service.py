"""Re-anchoring through the services (issue 23, docs/design/reanchoring.md) on real regtest
nodes, with the policy enabled on both sides (it is off by default): the server quotes with its
node's fee estimate and wallet, checks R with its node, stores it under the channel's lease,
broadcasts it and sends it back; payments go on meanwhile, signed and stored on both contracts.
What is not built yet (the watcher's promotion, top-up coins of a refused R) is not run here."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import messages, reanchor
from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.effects import (
    FundReanchor,
    ReanchorLocked,
    Send,
    StoreChannel,
    StorePayment,
)
from bitcoind_paychan.channel.fees import FeePolicy
from bitcoind_paychan.channel.records import ChannelRecord, Role
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.channel.watch import WatchPolicy
from bitcoind_paychan.errors import ChannelFailed, ReanchorRefused
from bitcoind_paychan.node import to_sat
from bitcoind_paychan.service.client import Channel, PaymentClient
from bitcoind_paychan.service.client.reanchoring import reanchor_locked, spent_outputs
from bitcoind_paychan.service.server import ServerManager
from bitcoind_paychan.transport.base import encode
from bitcoind_paychan.transport.limits import PeerLimits
from bitcoind_paychan.wire import pb
from regtest.waiting import until
from tests.service.carried import Dialer, Requests
from tests.service.conftest import MemSides, Sides

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


REANCHORING = ClientPolicy(VALUE, reanchoring=True)


async def carried_channel(sides: Sides | MemSides, version: int = 3,
                          policy: ClientPolicy = REANCHORING,
                          **options: Any
                          ) -> tuple[ServerManager, PaymentClient, Channel, Requests]:
    """A channel of `version` with re-anchoring enabled, on a connection the test carries
    (its frames held from now on: the test delivers them), paid 1,000 + 10,000 sat.
    `policy`: the client's; `options`: the server manager's."""
    manager = ServerManager(sides.server_ports(), sides.store("server"),
                            ServerPolicy(reanchoring=True), on_event=sides.events.append,
                            poll_interval=sides.poll_interval, **options)
    await manager.start()
    dial = Dialer(manager)
    client = sides.client(dial=dial, policy=policy)
    channel = await client.open_channel("app://shop", VALUE, version=version)
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
        stored = await stopped(manager, client, channel)
        return stored

    stored = asyncio.run(scenario())
    assert stored.pending is not None and stored.pending.complete
    assert Transaction.parse(stored.pending.tx).txid_hex in sides.server_node.rpc(
        "getrawmempool")


async def stopped(manager: ServerManager, client: PaymentClient, channel: Channel
                  ) -> ChannelRecord:
    """Stop both sides; the server's stored record of `channel`."""
    stored = manager.store.get(Role.SERVER, channel.record.channel_id)
    assert stored is not None
    await client.stop()
    await manager.stop()
    return stored


def server_generation(manager: ServerManager, channel_id: str) -> int:
    stored = manager.store.get(Role.SERVER, channel_id)
    assert stored is not None
    return stored.generation


async def ask(carried: Requests, message: pb.TwoWayChannelMessage) -> list[T]:
    """Deliver one of the client's messages to the server by hand; its answers."""
    return [T.FromString(f) for f in await carried.deliver(encode([message])[0])]


@pytest.mark.parametrize("version", [3, 4])
def test_a_top_up_r_paying_less_than_its_stated_rate_is_refused_by_its_real_fee(
        sides: Sides, version: int) -> None:
    """Review 3 (top-up skim): the server quotes 20 sat/vB; a hostile client's wallet funds
    R at 1 sat/vB and keeps the difference (the server's fee part, taken from its payout, is
    priced at the stated rate). The node's count of R's fee (testmempoolaccept fees.base)
    refuses it: nothing stored, nothing broadcast, the channel goes on."""
    async def scenario() -> tuple[T, Transaction, ChannelRecord]:
        manager, client, channel, carried = await carried_channel(
            sides, version, autopilot=WatchPolicy(fees=FeePolicy(min_rate=20)))
        machine = channel.machine
        (propose,) = [e.message for e in machine.reanchor(100_000, 0, int(time.time()))
                      if isinstance(e, Send)]
        (terms,) = await ask(carried, propose)
        assert terms.reanchor_terms.fee_rate == 20_000
        (fund,) = machine.receive(terms)
        assert isinstance(fund, FundReanchor) and fund.fee_rate == 20_000
        contract = fund.draft.inputs[0].prevout
        funded = await client.wallet.fund_external(  # at 1 sat/vB, not the quoted rate
            fund.draft, {(contract.txid_hex, contract.index): fund.contract_input_weight}, 1000)
        effects = machine.reanchor_funded(funded, await spent_outputs(client.chain, funded))
        for effect in effects:
            if isinstance(effect, StoreChannel):
                client.store.put(effect.record)
        (signed,) = [e.message for e in effects if isinstance(e, Send)]
        (answer,) = await ask(carried, signed)
        stored = await stopped(manager, client, channel)
        return answer, funded, stored

    answer, r, stored = asyncio.run(scenario())
    assert answer.type == T.REANCHOR_REFUSED
    assert "less than its stated rate" in answer.reanchor_refused.explanation
    assert stored.pending is None
    assert r.txid_hex not in sides.server_node.rpc("getrawmempool")


def test_proposals_on_one_connection_ask_the_wallet_once(mem_sides: MemSides) -> None:
    """Review 5: each REANCHOR_PROPOSE asked the wallet for a fresh address; the quotes of one
    connection now all pay the first one's script."""
    async def scenario() -> set[bytes]:
        manager, client, _channel, carried = await carried_channel(mem_sides)
        scripts = set()
        for _ in range(20):
            (terms,) = await ask(carried, messages.reanchor_propose(0, 2 * DAY))
            scripts.add(terms.reanchor_terms.payout_script)
        await client.stop()
        await manager.stop()
        return scripts

    assert len(asyncio.run(scenario())) == 1


def test_a_signed_r_waits_for_a_contract_check_slot(mem_sides: MemSides) -> None:
    """Review 5: CheckReanchor shares the node checks' slots (`max_contract_checks`): with the
    one slot taken, R is refused (nothing stored) once half the handshake timeout passed."""
    async def scenario() -> tuple[T, ChannelRecord]:
        manager, client, channel, carried = await carried_channel(
            mem_sides, limits=PeerLimits(max_contract_checks=1), handshake_timeout=0.2)
        reanchoring = asyncio.ensure_future(channel.reanchor(time_window=2 * DAY))
        await until(lambda: carried.held, what="REANCHOR_PROPOSE")
        for reply in await carried.deliver(carried.held.pop()):
            channel.receive(reply)
        await until(lambda: carried.held, what="REANCHOR_SIGNED")
        await manager.contract_checks.acquire()  # another check holds the one slot
        (answer,) = [T.FromString(f) for f in await carried.deliver(carried.held.pop())]
        manager.contract_checks.release()
        channel.receive(encode([answer])[0])
        with pytest.raises(ReanchorRefused):
            await reanchoring
        stored = await stopped(manager, client, channel)
        return answer, stored

    answer, stored = asyncio.run(scenario())
    assert answer.type == T.REANCHOR_REFUSED and "busy" in answer.reanchor_refused.explanation
    assert stored.pending is None



def test_payments_go_on_while_a_reanchor_is_asked_and_signed(mem_sides: MemSides) -> None:
    """Review 9: `reanchor` held the payment lock for the whole exchange, pausing payments
    until the server answered. Now a payment goes out while the PROPOSE waits for its
    answer, and one signed while R is being signed follows R on the wire: delivered in the
    order sent, the server takes every frame (a payment before R on the contract alone, one
    after it on both contracts)."""
    async def scenario() -> tuple[list[T], list[int], ChannelRecord]:
        manager, client, channel, carried = await carried_channel(mem_sides)
        reanchoring = asyncio.ensure_future(channel.reanchor(time_window=2 * DAY))
        await until(lambda: carried.held, what="REANCHOR_PROPOSE")
        first = asyncio.ensure_future(channel.pay(1_000))
        await until(lambda: len(carried.held) == 2, what="a payment behind the PROPOSE")
        (terms,) = await carried.deliver(carried.held.pop(0))  # kept back for now
        for reply in await carried.deliver(carried.held.pop(0)):
            channel.receive(reply)  # the first payment's ack
        await first
        channel.receive(terms)  # the reader wakes first: it signs R and stores it...
        second = asyncio.ensure_future(channel.pay(2_000))  # ...while this one is signed
        await until(lambda: len(carried.held) == 2, what="R and the second payment")
        sent = [T.FromString(frame) for frame in carried.held]
        answers = []
        for frame in list(carried.held):
            for reply in await carried.deliver(frame):
                answers.append(int(T.FromString(reply).type))
                channel.receive(reply)
        carried.held.clear()
        await second
        await reanchoring
        stored = await stopped(manager, client, channel)
        return sent, answers, stored

    sent, answers, stored = asyncio.run(scenario())
    assert sorted(answers) == sorted([T.REANCHOR_ACK, T.PAYMENT_ACK])  # no ERROR
    # The reader handles the TERMS first (asyncio runs ready tasks in order), so the payment
    # is signed while R is being stored: it waits for R, then follows it, on both contracts.
    assert [m.type for m in sent] == [T.REANCHOR_SIGNED, T.UPDATE_PAYMENT]
    assert sent[1].update_payment.next_signature
    assert stored.paid == 1_000 + 10_000 + 1_000 + 2_000
    assert stored.pending is not None and stored.pending.complete
    stored.pending.contract.check_payment(stored.pending.change, stored.pending.signature)


def test_the_servers_unasked_terms_do_not_answer_a_later_reanchor(mem_sides: MemSides) -> None:
    """Review 9: the client's declining of unasked TERMS was left among its events, and the
    next `reanchor` took it for its own answer (refused at once, while the server's answer
    to its PROPOSE was signed anyway)."""
    async def scenario() -> ChannelRecord:
        manager, client, channel, carried = await carried_channel(mem_sides)
        carried.hold = False
        record = channel.record
        channel.receive(encode([messages.reanchor_terms(  # a renewal of 1 s: declined
            record.contract.expiry + 1, 0, b"\x00\x14" + bytes(20), 1000)])[0])
        await channel.pay(1_000)  # reads the TERMS, then the ack
        signed = await channel.reanchor(time_window=2 * DAY)
        await client.stop()
        await manager.stop()
        return signed

    signed = asyncio.run(scenario())
    assert signed.pending is not None and signed.pending.complete


def test_an_unasked_payout_read_while_a_top_up_is_due_becomes_one_r_with_both(
        mem_sides: MemSides) -> None:
    """The server's unasked payout reaches the client's reader (a payment awaiting its ack)
    while the client's autopilot wants a top-up: the client proposes its top-up instead of
    signing the payout alone, and the server's answer pays out and tops up in one R. Before,
    the payout alone was signed, every time the server spoke first (as it does on each new
    generation: its node sees R first). Frames are held and delivered by the test."""
    policy = ClientPolicy(VALUE, reanchoring=True, refill_below=985_000, refill_to=VALUE,
                          max_deposit=3 * VALUE)

    async def scenario() -> tuple[list[int], ChannelRecord]:
        manager, client, channel, carried = await carried_channel(mem_sides, policy=policy)
        paying = asyncio.ensure_future(channel.pay(5_000))  # 984,000 left: a top-up is due
        await until(lambda: carried.held, what="the payment")
        carried.replies.frames = []
        quoted = await manager.quote(channel.channel_id)  # the payout of 11,000, unasked
        assert quoted["payout"] == 11_000
        for frame in carried.replies.frames:
            channel.receive(frame)  # read by the payment awaiting its ack
        await until(lambda: len(carried.held) == 2, what="the client's answer to the quote")
        answered = [int(T.FromString(f).type) for f in carried.held]
        carried.hold = False
        for frame in carried.held:
            for reply in await carried.deliver(frame):
                channel.receive(reply)
        await paying
        for _ in range(50):
            await channel.pay(1_000)
            pending = channel.record.pending
            if pending is not None and pending.complete:
                break
        record = channel.record
        await client.stop()
        await manager.stop()
        return answered, record

    answered, record = asyncio.run(scenario())
    assert answered == [T.UPDATE_PAYMENT, T.REANCHOR_PROPOSE]  # not REANCHOR_SIGNED
    assert record.pending is not None and record.pending.complete
    r = Transaction.parse(record.pending.tx)
    assert len(r.inputs) == 2 and record.pending.payout == 16_000  # the top-up and payout
    assert record.pending.contract.value - VALUE + record.pending.payout == VALUE - 984_000


@pytest.mark.parametrize(("version", "top_up"), [(3, 0), (4, 0), (3, 50_000), (4, 50_000)])
def test_the_client_moves_to_the_new_contract_on_its_own_nodes_word(
        mem_sides: MemSides, version: int, top_up: int) -> None:
    """Review 7: a REANCHOR_LOCKED while R is unconfirmed (a hostile server, right after its
    ACK) made the client drop C and its refund. Now the client stays on C, payments signed
    on both contracts and taken by the server; once its own node shows R confirmed (a top-up
    R: forget_depth deep, the deep search's reorg case), the server's lock promotes its
    stored channel."""
    final = 3  # the client's forget_depth

    async def scenario() -> tuple[ChannelRecord, ChannelRecord, ChannelRecord]:
        manager, client, channel, carried = await carried_channel(mem_sides, version)
        carried.hold = False
        signed = await channel.reanchor(top_up=top_up, time_window=2 * DAY)
        assert signed.pending is not None
        channel.receive(encode([messages.reanchor_locked(signed.pending.txid)])[0])
        await channel.pay(1_000)  # reads the early lock, then this payment's ack
        kept = client.store.get(Role.CLIENT, signed.channel_id)
        assert kept is not None
        mem_sides.mine(1)
        if top_up:  # 1 confirmation: a reorg could let the client spend its coin elsewhere
            assert await reanchor_locked(client.chain, channel.machine,
                                         ReanchorLocked(channel.record), final) == []
            mem_sides.mine(final - 1)
        effects = await reanchor_locked(client.chain, channel.machine,
                                        ReanchorLocked(channel.record), final)
        assert [type(e) for e in effects] == [StoreChannel]  # the machine moved: store it
        await channel._run(effects)
        promoted = client.store.get(Role.CLIENT, signed.channel_id)
        assert promoted is not None
        stored = await stopped(manager, client, channel)
        return kept, promoted, stored

    kept, promoted, stored = asyncio.run(scenario())
    assert kept.generation == 0 and kept.pending is not None and kept.pending.complete
    assert stored.paid == kept.paid and stored.pending is not None  # paid on both contracts
    stored.pending.contract.check_payment(stored.pending.change, stored.pending.signature)
    assert promoted.generation == 1 and promoted.contract_txid == kept.pending.txid
    assert promoted.change == stored.pending.change


def test_a_top_up_our_wallet_cannot_fund_is_refused_at_once_and_the_channel_goes_on(
        mem_sides: MemSides) -> None:
    """The wallet funds a top-up beside the connection's reader; when it cannot (60 BTC
    asked of a 50 BTC wallet), `reanchor` is told at once, not after its timeout with the
    connection dropped (no message from the server would have woken it)."""
    async def scenario() -> tuple[bool, ChannelRecord]:
        manager, client, channel, carried = await carried_channel(mem_sides)
        carried.hold = False
        with pytest.raises(ReanchorRefused, match="could not fund"):
            await channel.reanchor(top_up=60 * 100_000_000, timeout=30)
        connected = channel.connected
        await channel.pay(1_000)  # the channel goes on, and may re-anchor again
        signed = await channel.reanchor(time_window=2 * DAY)
        await client.stop()
        await manager.stop()
        return connected, signed

    connected, signed = asyncio.run(scenario())
    assert connected and signed.pending is not None and signed.pending.complete
    assert len(Transaction.parse(signed.pending.tx).inputs) == 1
    assert not mem_sides.client_node.wallet.locked  # nothing stays locked


@pytest.mark.parametrize("top_up", [0, 50_000])
def test_a_live_channel_whose_node_lagged_the_servers_lock_moves_once_r_is_buried(
        mem_sides: MemSides, top_up: int) -> None:
    """The server's REANCHOR_LOCKED (sent once) came before our node showed R deep enough:
    the live channel stayed on C, signing on both contracts, until the next resume. Now our
    watcher, finding R buried, moves the live channel as the lock would have. The carried
    connection brings no later lock of the server's: only our watcher can move it."""
    async def scenario() -> tuple[ChannelRecord, ChannelRecord, ChannelRecord]:
        manager, client, channel, carried = await carried_channel(mem_sides)
        carried.hold = False
        signed = await channel.reanchor(top_up=top_up, time_window=2 * DAY)
        assert signed.pending is not None
        channel.receive(encode([messages.reanchor_locked(signed.pending.txid)])[0])
        await channel.pay(1_000)  # reads the early lock: our node shows R nowhere yet
        kept = channel.record
        mem_sides.mine(max(client.watcher.policy.forget_depth,  # a top-up R's depth too
                           manager.watcher.policy.forget_depth))
        await until(lambda: channel.record.generation == 1, 30,
                    "the live channel's promotion by our watcher")
        await until(lambda: server_generation(manager, signed.channel_id) == 1, 30,
                    "the server's promotion (its lock lost on the carried connection)")
        sent = len(carried.exchanges)
        await channel.pay(1_000)
        payment = carried.exchanges[sent]
        assert payment.response == [T.PAYMENT_ACK]
        last = client.store.get(Role.CLIENT, signed.channel_id)
        assert last is not None
        await stopped(manager, client, channel)
        return kept, channel.machine._stored(), last

    kept, live, stored = asyncio.run(scenario())
    assert kept.generation == 0 and kept.pending is not None
    assert live.generation == 1 and live.contract_txid == kept.pending.txid
    assert stored.generation == 1 and stored.pending is None and stored.paid == live.paid


def test_the_server_checks_a_renewal_against_its_clock_when_r_arrives(
        mem_sides: MemSides) -> None:
    """Review 2: the server checked R's expiry against the time its connection started. On
    a connection that has streamed for 20 hours, R renewing C by one second (terms altered on
    their way) leaves the client's refund of C' less than the minimum window away: the
    server's clock at R's arrival refuses it (before: taken)."""
    clock = [time.time()]

    async def scenario() -> tuple[list[T], ChannelRecord]:
        manager, client, channel, carried = await carried_channel(mem_sides,
                                                                  clock=lambda: clock[0])
        reanchoring = asyncio.ensure_future(channel.reanchor(time_window=2 * DAY))
        await until(lambda: carried.held, what="REANCHOR_PROPOSE")
        (terms,) = [T.FromString(f) for f in await carried.deliver(carried.held.pop())]
        expiry = channel.record.contract.expiry
        terms.reanchor_terms.expire_time_secs = expiry + 1
        channel.receive(terms)
        await until(lambda: carried.held, what="REANCHOR_SIGNED")
        lead = manager.policy.settle_margin + reanchor.REANCHOR_LEAD
        clock[0] = expiry - lead - 600  # C keeps its lead; E' is not a window away
        answers = [T.FromString(f) for f in await carried.deliver(carried.held.pop())]
        for reply in carried.replies.frames:
            channel.receive(reply)
        with pytest.raises(ChannelFailed):
            await reanchoring
        return answers, await stopped(manager, client, channel)

    answers, stored = asyncio.run(scenario())
    assert answers[0].type == T.ERROR and "outside" in answers[0].error.explanation
    assert stored.pending is None


def test_a_payment_signed_while_r_is_stored_is_stored_and_sent_after_it(
        mem_sides: MemSides, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 9's other half: with payments no longer paused, one signed (on both
    contracts) while R is being stored must not be stored before R (the store would refuse
    it, or R's write would overwrite its change) nor reach the server before R (the server,
    not holding R, would check R's carried change against it). R's store is held by the
    test (R's write goes through the payment writer, in order): nothing of the payment was
    stored meanwhile, and it is stored after R."""
    async def scenario() -> tuple[list[str], list[str], list[T]]:
        manager, client, channel, carried = await carried_channel(mem_sides)
        store, order = client.store, []
        gate, entered = threading.Event(), threading.Event()
        put, record_payments = store.put, store.record_payments

        def held_put(record: ChannelRecord) -> None:
            fresh = record.pending is not None and not record.pending.complete
            if fresh:
                entered.set()
                gate.wait(30)
            put(record)
            order.append("R" if fresh else "record")

        def logged(payments: Any) -> Any:
            if payments:  # the test's own flush below hands over none
                order.append("payment")
            return record_payments(payments)

        monkeypatch.setattr(store, "put", held_put)
        monkeypatch.setattr(store, "record_payments", logged)
        reanchoring = asyncio.ensure_future(channel.reanchor(time_window=2 * DAY))
        await until(lambda: carried.held, what="REANCHOR_PROPOSE")
        (terms,) = await carried.deliver(carried.held.pop())
        channel.receive(terms)
        await until(entered.is_set, what="R being stored")
        payments = channel.record.payments
        paying = asyncio.ensure_future(channel.pay(2_000))
        await until(lambda: channel.record.payments == payments + 1, what="the payment signed")
        during = list(order)  # R's write holds the payment writer: the payment waits behind it
        gate.set()
        await until(lambda: len(carried.held) == 2, what="R and the payment")
        sent = [T.FromString(frame) for frame in carried.held]
        for frame in list(carried.held):
            for reply in await carried.deliver(frame):
                channel.receive(reply)
        carried.held.clear()
        await paying
        await reanchoring
        await stopped(manager, client, channel)
        return during, order, sent

    during, order, sent = asyncio.run(scenario())
    assert during == []  # nothing of the payment stored while R was
    assert order[:2] == ["R", "payment"]
    assert [m.type for m in sent] == [T.REANCHOR_SIGNED, T.UPDATE_PAYMENT]
    assert sent[1].update_payment.next_signature
