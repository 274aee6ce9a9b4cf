"""The payment client: on a real regtest node, a channel its server never opened and opens to
several peers at once (channel keys imported together); on the in-process chain, carried
payments and what paying or closing a closed channel says."""

from __future__ import annotations

import asyncio

import pytest

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.errors import ChannelFailed, ChannelGone
from bitcoind_paychan.service.server import PaymentServer, ServerManager
from bitcoind_paychan.wire import pb
from regtest.waiting import until
from tests.service.carried import Dialer
from tests.service.conftest import Duo, MemSides, Sides
from tests.service.test_integrator import gated

VALUE = 400_000


class NodeDownServer(PaymentServer):
    """A server whose node does not answer when a contract arrives: its machine answers the
    contract with a retryable ERROR OTHER before anything is stored or broadcast."""

    async def _check_contract(self, tx: Transaction) -> tuple[str | None, bool]:
        return "its node does not answer", True


def test_a_contract_the_server_never_opened_releases_its_coins_and_is_never_broadcast(
        one_node: Sides) -> None:
    """Seen: the client kept such a channel OPEN with its funding coins locked until a refund
    a day later, and the autopilot would broadcast the contract itself before refunding. Now
    it releases the coins and says nothing was spent; it keeps the record (and key), so if
    the contract reaches the chain after all, the channel is refunded at its expiry."""
    sides = one_node
    node = sides.client_node
    wallet = sides.client_wallet

    async def scenario() -> tuple[str, ChannelStatus | None]:
        server = sides.server(kind=NodeDownServer)
        host, port = await server.listen()
        client = sides.client()
        try:
            await client.open(host, port, VALUE)
        except ChannelFailed as exc:
            message = str(exc)
        else:
            raise AssertionError("the channel opened")
        (record,) = client.channels()
        assert record.status is ChannelStatus.FAILED  # kept, with its key; not open
        contract = Transaction.parse(record.contract_tx)
        assert node.rpc("listlockunspent", wallet=wallet) == []  # the wallet may spend them
        for txin in contract.inputs:
            assert node.rpc("gettxout", txin.prevout.txid_hex, txin.prevout.index) is not None
        # Past its expiry, the autopilot broadcasts neither the contract nor a refund.
        await asyncio.to_thread(node.advance_median_time_past, record.contract.expiry)
        await client.watcher.review_all()
        assert node.rpc("getrawmempool") == []
        # The contract reaches the chain anyway (say the server's node took it late).
        node.rpc("sendrawtransaction", contract.hex())
        await asyncio.to_thread(node.mine, 1)
        await until(lambda: client.store.get(Role.CLIENT, record.contract_txid)
                    .status is not ChannelStatus.FAILED,  # type: ignore[union-attr]
                    what="the channel to count as funded")
        await until(lambda: len(node.rpc("getrawmempool")) == 1, what="the refund")
        await asyncio.to_thread(node.mine, 1)
        await until(lambda: sides.client_events != [], what="the refund to confirm")
        await client.stop()
        await server.stop()
        return message, sides.client_events[0].status

    message, finished = asyncio.run(scenario())
    assert "OTHER" in message and "retry" in message
    assert "nothing was spent" in message and "released" in message
    assert "stays stored" not in message
    assert finished is ChannelStatus.REFUNDED


def test_a_payment_the_application_carries_completes_when_it_feeds_back_the_ack(
        mem_sides: MemSides) -> None:
    """The client manager over a connection the application carries: `pay` sends its
    UPDATE_PAYMENT through the application's link and returns once the application hands it
    the PAYMENT_ACK (`Channel.receive`); a resume dials a new carried connection."""
    async def scenario() -> tuple[bool, bool, bytes, int, int]:
        manager = ServerManager(mem_sides.server_ports(), mem_sides.store("server"),
                                on_payment=lambda p: b"ok", on_event=mem_sides.events.append,
                                poll_interval=mem_sides.poll_interval)
        await manager.start()
        dial = Dialer(manager)
        client = mem_sides.client(dial=dial)
        first = await client.open_channel("app://shop", 300_000)
        await first.pay(4_000)
        await first.disconnect()
        channel = await client.open_channel("app://shop", 300_000)
        carried = dial.connections[-1]
        carried.hold = True
        paying = asyncio.ensure_future(channel.pay(5_000))
        await until(lambda: carried.held, what="the UPDATE_PAYMENT handed to the application")
        sent = pb.TwoWayChannelMessage.FromString(carried.held[0]).type
        waited = not paying.done()
        for reply in await carried.deliver(carried.held.pop()):
            channel.receive(reply)
        ack = await paying
        await client.stop()
        await manager.stop()
        return (sent == pb.TwoWayChannelMessage.UPDATE_PAYMENT, waited, ack, channel.paid,
                len(dial.connections))

    sent_payment, waited, ack, paid, connections = asyncio.run(scenario())
    assert sent_payment and waited
    assert ack == b"ok"
    assert paid == 1_000 + 4_000 + 5_000
    assert connections == 2  # resumed on a new connection
    assert [p.amount for p in mem_sides.payments()][-1] == 5_000


def status(sides: Duo, txid: str) -> ChannelStatus | None:
    record = sides.store("client").get(Role.CLIENT, txid)
    return record.status if record else None


def test_paying_or_closing_a_channel_settled_and_forgotten_meanwhile_is_channel_gone(
        mem_sides: MemSides) -> None:
    """The server settles while the application holds the channel and does not read; the
    autopilot sees the settlement buried and forgets the channel. Paying through it, or
    closing it, then says it is gone and to open a new one (it was a StoreError), and
    nothing is stored."""
    async def scenario() -> tuple[str, str, str, int]:
        server = mem_sides.server()
        host, port = await server.listen()
        client = mem_sides.client()
        channel = await client.open(host, port, VALUE)
        await channel.pay(2_000)
        txid = channel.contract_txid
        await server.settle(txid)
        while status(mem_sides, txid) is not None:  # settled, buried, forgotten
            await asyncio.to_thread(mem_sides.mine, 1)
            await until(lambda: status(mem_sides, txid) is not ChannelStatus.OPEN, 5.0,
                        "the client's autopilot to see the settlement")
        with pytest.raises(ChannelGone) as paying:
            await channel.pay(1_000)
        with pytest.raises(ChannelGone) as closing:
            await channel.close()
        logged = len(mem_sides.store("client").payments(Role.CLIENT, txid))
        await client.stop()
        await server.stop()
        return txid, str(paying.value), str(closing.value), logged

    txid, paying, closing, logged = asyncio.run(scenario())
    for message in (paying, closing):
        assert f"channel {txid} is closed and forgotten" in message, message
        assert "open a new channel" in message, message
    assert logged == 2  # the initial payment and the 2,000: nothing for the refused one


def test_paying_a_closed_or_disconnected_channel_says_what_happened_and_what_to_do(
        mem_sides: MemSides) -> None:
    async def scenario() -> tuple[str, str, str, str, int]:
        server = mem_sides.server()
        host, port = await server.listen()
        client = mem_sides.client()
        channel = await client.open(host, port, VALUE)
        await channel.disconnect()
        with pytest.raises(ChannelFailed) as disconnected:
            await channel.pay(1_000)
        resumed = await client.open(host, port, VALUE)
        await resumed.pay(1_000)
        settlement = await resumed.close()
        with pytest.raises(ChannelGone) as closed:
            await resumed.pay(1_000)
        again = await resumed.close()  # closing a closed channel returns its settlement
        await client.stop()
        await server.stop()
        return (str(disconnected.value), str(closed.value), settlement.txid_hex,
                again.txid_hex, resumed.paid)

    disconnected, closed, settlement, again, paid = asyncio.run(scenario())
    assert "ended" in disconnected and "resume it" in disconnected, disconnected
    assert "nothing was stored or sent" in disconnected
    assert "is closing: the server settled it" in closed and "open a new channel" in closed
    assert settlement == again
    assert paid == 1_000 + 1_000


def test_opens_to_two_peers_at_once_both_fund_their_channel(sides: Sides) -> None:
    """Seen: with no latency, the second of two opens failed with the node's raw "Wallet is
    currently rescanning" (two channel keys imported at once). On the real node: its wallet's
    imports are the point."""
    sides.fund_client(3)

    async def scenario() -> set[str]:
        server, dial, client = await gated(sides)
        opens = [asyncio.ensure_future(client.open_channel(peer, VALUE))
                 for peer in ("app://a", "app://b", "app://c")]
        await until(lambda: dial.calls == 3, what="three opens dialing together")
        dial.gate.set()
        channels = await asyncio.gather(*opens)
        await client.stop()
        await server.stop()
        return {channel.contract_txid for channel in channels}

    assert len(asyncio.run(scenario())) == 3
