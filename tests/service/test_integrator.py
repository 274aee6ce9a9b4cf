"""The library as an integrator meets it (issue 26), on the in-process chain: concurrent opens
fund one channel, a manager that does not watch the chain refuses channels, the application's
callbacks cannot break a payment, `pay` gives up after its timeout, the server records the
peer the application names, a used-up channel is ChannelGone, the client hears of the
server's settlement while it is in the mempool, and the client's `on_event` hears each
channel's events in their documented order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from bitcoind_paychan import (
    Channel,
    ChannelClosed,
    ChannelExists,
    ChannelGone,
    ChannelOpened,
    ChannelStatus,
    ClientEvent,
    ClientManager,
    NotStarted,
    PaymentAcknowledged,
    PaymentReceived,
    PaymentTimeout,
    Role,
    ServerEvent,
    ServerManager,
    Stream,
)
from regtest.waiting import until
from tests.service.carried import Dialer, Replies
from tests.service.conftest import Duo, MemSides

PEER = "app://shop"
VALUE = 300_000


class GatedDialer(Dialer):
    """Dials only once the test opens `gate`; `calls` counts the dials begun."""

    def __init__(self, manager: ServerManager) -> None:
        super().__init__(manager)
        self.gate = asyncio.Event()
        self.calls = 0

    async def __call__(self, peer: str, timeout: float | None) -> Stream:
        self.calls += 1
        await self.gate.wait()
        return await super().__call__(peer, timeout)


@pytest.fixture
def sides(mem_sides: MemSides) -> MemSides:
    """These tests are about the managers' decisions: they run on the in-process chain."""
    return mem_sides


def manager(sides: Duo, **options: object) -> ServerManager:
    return ServerManager(sides.server_ports(), sides.store("server"),
                         on_event=sides.events.append,
                         poll_interval=sides.poll_interval, review_interval=0.5,
                         **options)  # type: ignore[arg-type]


async def gated(sides: Duo) -> tuple[ServerManager, GatedDialer, ClientManager]:
    """A started server manager, and a client that reaches it through a gated dialer."""
    server = manager(sides)
    await server.start()
    dial = GatedDialer(server)
    return server, dial, sides.client(dial=dial)


async def while_first_dials(client: ClientManager, dial: GatedDialer,
                            first: Callable[[], Awaitable[Channel]],
                            second: Callable[[], Awaitable[Channel]]
                            ) -> tuple[asyncio.Task[Channel], asyncio.Task[Channel]]:
    """Start `first`; once it is dialing (held at the gate), start `second` and let it run
    until it waits for its turn or dials too; then open the gate."""
    one = asyncio.ensure_future(first())
    await until(lambda: dial.calls == 1, what="the first call to dial")
    two = asyncio.ensure_future(second())
    await until(lambda: client.turns.waiting(PEER) == 1 or dial.calls == 2 or two.done(),
                what="the second call to wait for its turn (or dial)")
    dial.gate.set()
    await asyncio.wait([one, two])
    return one, two


def test_two_opens_at_once_fund_one_channel_and_share_it(sides: MemSides) -> None:
    """Seen: two `open_channel` calls for one peer funded two channels, or the second resumed
    the first's channel and killed its connection. Now the second waits for the first and
    gets the very same channel; `resumed` is left as it was."""
    sides.fund_client(2)  # enough for two channels, as the bug funded

    async def scenario() -> None:
        server, dial, client = await gated(sides)
        one, two = await while_first_dials(
            client, dial, lambda: client.open_channel(PEER, VALUE),
            lambda: client.open_channel(PEER, VALUE))
        first, second = one.result(), two.result()
        assert first is second and not first.resumed
        assert dial.calls == 1
        await asyncio.gather(first.pay(1_000), second.pay(2_000))
        # Dropped, then resumed twice at once (by open and by resume): one connection.
        await first.disconnect()
        dial.gate.clear()
        txid = first.contract_txid
        one, two = await while_first_dials(
            client, dial, lambda: client.open_channel(PEER, VALUE), lambda: client.resume(txid))
        again, also = one.result(), two.result()
        assert again is also and again.resumed and again.contract_txid == txid
        assert dial.calls == 2
        await also.pay(3_000)
        assert len(client.channels()) == 1 and len(server.channels()) == 1
        await client.stop()
        await server.stop()

    asyncio.run(scenario())
    assert sum(p.amount for p in sides.payments()) == 1_000 + 1_000 + 2_000 + 3_000


def test_an_open_of_another_value_meanwhile_is_channel_exists_and_funds_nothing(
        sides: MemSides) -> None:
    sides.fund_client(2)

    async def scenario() -> str:
        server, dial, client = await gated(sides)
        one, two = await while_first_dials(
            client, dial, lambda: client.open_channel(PEER, VALUE),
            lambda: client.open_channel(PEER, VALUE + 1_000))
        assert one.exception() is None
        assert isinstance(two.exception(), ChannelExists)
        assert len(client.channels()) == 1 and dial.calls == 1
        await client.stop()
        await server.stop()
        return str(two.exception())

    message = asyncio.run(scenario())
    assert f"open with {VALUE} sat" in message and "new=True" in message


def test_a_manager_not_watching_the_chain_refuses_channels(sides: MemSides) -> None:
    """Seen: a ServerManager never started took payments while nothing watched the chain, so
    a channel its client kept open would be refunded at expiry, payments and all."""
    async def scenario() -> tuple[str, str]:
        server = manager(sides)
        with pytest.raises(NotStarted) as refused:
            server.accept(Replies(), peer="user 42")
        client = sides.client(dial=Dialer(server))
        with pytest.raises(NotStarted) as opening:
            await client.open_channel(PEER, VALUE)
        assert client.channels() == [] and server.channels() == []  # nothing funded
        await client.stop()
        return str(refused.value), str(opening.value)

    for message in asyncio.run(scenario()):
        assert "await manager.start()" in message and "nothing was accepted" in message


def test_a_failing_callback_is_logged_and_counted_and_the_payment_still_acknowledged(
        sides: MemSides, caplog: pytest.LogCaptureFixture) -> None:
    """Seen: an exception in `on_payment` or `on_event` escaped `receive()`: the payment was
    stored but never acknowledged, and `pay()` waited forever."""
    def on_payment(event: PaymentReceived) -> bytes:
        if event.amount == 2_000:
            raise RuntimeError("the application's bug")
        return b"ok"

    def on_event(event: ServerEvent) -> None:
        sides.events.append(event)
        raise ValueError("another bug")

    async def scenario() -> tuple[bytes, bytes, int, int]:
        server = manager(sides, on_payment=on_payment)
        server.on_event = on_event
        await server.start()
        client = sides.client(dial=Dialer(server))
        channel = await client.open_channel(PEER, VALUE)
        failing = await channel.pay(2_000)  # on_payment raises: acked, without info
        fine = await channel.pay(3_000)
        stored = server.store.get(Role.SERVER, channel.contract_txid)
        assert stored is not None
        await client.stop()
        await server.stop()
        return failing, fine, stored.paid, server.callback_errors

    with caplog.at_level(logging.ERROR, "bitcoind_paychan.service.callbacks"):
        failing, fine, paid, errors = asyncio.run(scenario())
    assert failing == b"" and fine == b"ok"
    assert paid == 1_000 + 2_000 + 3_000
    # on_event raised for each event (opening payment, opened, 2 payments); on_payment once.
    assert errors == len(sides.events) + 1 and len(sides.events) >= 4
    assert "the application's bug" in caplog.text and "on_payment" in caplog.text


def test_pay_without_an_ack_times_out_and_the_payment_is_sent_again_on_resume(
        sides: MemSides) -> None:
    async def scenario() -> tuple[str, int, int]:
        server = manager(sides)
        await server.start()
        dial = Dialer(server)
        client = sides.client(dial=dial)
        channel = await client.open_channel(PEER, VALUE)
        dial.connections[-1].hold = True  # the application never delivers the payment
        with pytest.raises(PaymentTimeout) as timed_out:
            await channel.pay(4_000, timeout=0.5)
        assert not channel.connected
        stored = client.store.get(Role.CLIENT, channel.contract_txid)
        assert stored is not None and stored.paid == 1_000 + 4_000  # kept: it may have left
        resumed = await client.open_channel(PEER, VALUE)  # sends it again
        server_paid = server.store.get(Role.SERVER, channel.contract_txid)
        assert server_paid is not None
        await client.stop()
        await server.stop()
        return str(timed_out.value), resumed.paid, server_paid.paid

    message, client_paid, server_paid = asyncio.run(scenario())
    assert "within 0.5 s" in message and "resume the channel" in message
    assert client_paid == server_paid == 5_000


def test_the_servers_records_views_events_and_logs_carry_the_peer_the_application_named(
        sides: MemSides, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[str, str]:
        server = manager(sides)
        await server.start()
        client = sides.client(dial=Dialer(server))  # accept(link, "app client")
        channel = await client.open_channel(PEER, VALUE)
        await channel.pay(1_000)
        await channel.disconnect()
        (view,) = server.views()
        stored = server.store.get(Role.SERVER, channel.contract_txid)
        await client.stop()
        await server.stop()
        assert stored is not None
        return view.peer, stored.peer

    with caplog.at_level(logging.INFO, "bitcoind_paychan.service.server"):
        view_peer, stored_peer = asyncio.run(scenario())
    assert view_peer == stored_peer == "app client"
    assert "app client opened channel" in caplog.text
    assert {event.record.peer for event in sides.opened() + sides.payments()} == {"app client"}


def test_paying_a_channel_down_to_dust_makes_the_next_payment_channel_gone(
        sides: MemSides) -> None:
    async def scenario() -> str:
        server = manager(sides)
        await server.start()
        client = sides.client(dial=Dialer(server))
        channel = await client.open_channel(PEER, VALUE)
        await channel.pay(channel.remaining - 100)  # leaves 100 sat: dust, the server's
        assert channel.remaining == 0
        with pytest.raises(ChannelGone) as gone:
            await channel.pay(1)
        await client.stop()
        await server.stop()
        return str(gone.value)

    message = asyncio.run(scenario())
    assert "used up" in message and "open a new channel" in message


def test_the_client_hears_of_the_servers_settlement_in_the_mempool_before_it_confirms(
        sides: MemSides) -> None:
    """Then our close() finds that settlement on chain and returns it, without telling the
    closing a second time (no ChannelClosed after the ClosingSeen)."""
    async def scenario() -> tuple[str, str, ChannelStatus]:
        server = manager(sides)
        await server.start()
        client = sides.client(dial=Dialer(server))
        channel = await client.open_channel(PEER, VALUE)
        await channel.pay(5_000)
        await channel.disconnect()
        settlement = await server.settle(channel.contract_txid)
        await until(lambda: sides.client_closing, what="the client to see the settlement")
        assert sides.client_events == []  # not confirmed: nothing finished yet
        assert (await channel.close()).txid_hex == settlement.txid_hex  # from the chain
        await asyncio.to_thread(sides.mine, 1)
        await until(lambda: sides.client_events, what="the settlement to confirm")
        await client.stop()
        await server.stop()
        return (settlement.txid_hex, sides.client_closing[0].closing.txid_hex,
                sides.client_events[0].status)

    settled, seen, finished = asyncio.run(scenario())
    assert seen == settled and finished is ChannelStatus.SETTLED
    (closing,) = sides.client_closing
    assert not closing.refund and closing.record.status is ChannelStatus.OPEN
    assert heard(sides) == ["ChannelOpened", "PaymentAcknowledged", "ClosingSeen",
                            "ChannelFinished"]


def heard(sides: Duo) -> list[str]:
    """The client's events so far, by name (and, for a ChannelOpened, resumed or not)."""
    return [f"{type(e).__name__}(resumed)" if isinstance(e, ChannelOpened) and e.resumed
            else type(e).__name__ for e in sides.client_heard]


def test_the_client_hears_open_each_ack_close_and_finish_in_order_through_on_event(
        sides: MemSides) -> None:
    """Events without polling on the client side too: each before the call it answers
    returns; the resume's repeat of the last payment is not a payment; the calls' answers
    are unchanged."""
    async def scenario() -> tuple[list[str], list[int], bytes, str, str]:
        server = manager(sides, on_payment=lambda event: b"ok")
        await server.start()
        client = sides.client(dial=Dialer(server))
        channel = await client.open_channel(PEER, VALUE)
        assert heard(sides) == ["ChannelOpened"]  # told before open_channel returned
        info = await channel.pay(2_000)
        assert heard(sides)[-1] == "PaymentAcknowledged"  # told before pay returned
        await channel.disconnect()
        channel = await client.open_channel(PEER, VALUE)  # resumed: its ChannelOpened again
        await channel.pay(3_000)
        settlement = await channel.close()
        told = sides.client_heard[-1]
        assert isinstance(told, ChannelClosed)
        await asyncio.to_thread(sides.mine, 1)
        await until(lambda: sides.client_events, what="the settlement to confirm")
        await client.stop()
        await server.stop()
        acks = [e.amount for e in sides.client_heard if isinstance(e, PaymentAcknowledged)]
        return heard(sides), acks, info, settlement.txid_hex, told.settlement.txid_hex

    names, acks, info, settlement, told = asyncio.run(scenario())
    assert names == ["ChannelOpened", "PaymentAcknowledged", "ChannelOpened(resumed)",
                     "PaymentAcknowledged", "ChannelClosed", "ChannelFinished"]
    assert acks == [2_000, 3_000] and info == b"ok" and told == settlement
    (finished,) = sides.client_events
    assert finished.status is ChannelStatus.SETTLED and finished.closing is not None
    assert finished.closing.txid_hex == settlement
    assert {e.record.contract_txid for e in sides.client_heard} == {
        finished.record.contract_txid}


def test_a_failing_client_callback_is_counted_and_the_calls_still_answer(
        sides: MemSides, caplog: pytest.LogCaptureFixture) -> None:
    def on_event(event: ClientEvent) -> None:
        sides.client_heard.append(event)
        raise RuntimeError("the client application's bug")

    async def scenario() -> tuple[bytes, int]:
        server = manager(sides, on_payment=lambda event: b"ok")
        await server.start()
        client = sides.client(dial=Dialer(server))
        client.on_event = on_event
        channel = await client.open_channel(PEER, VALUE)
        info = await channel.pay(2_000)
        await client.stop()
        await server.stop()
        return info, client.callback_errors

    with caplog.at_level(logging.ERROR, "bitcoind_paychan.service.callbacks"):
        info, errors = asyncio.run(scenario())
    assert info == b"ok" and errors == 2 == len(sides.client_heard)
    assert "the client application's bug" in caplog.text
