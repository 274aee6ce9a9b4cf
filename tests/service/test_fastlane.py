"""The server's fast lane (service/server/fastlane.py): payments on an open TCP connection
handled in the protocol's callback and acknowledged in their commit's. Each test drives the
interleaving with the test's own gates (a gated writer, frames sent in one write), never by
timing: every ack still follows its payment's durable commit, a payment stored after its
channel's settlement was decided is never acknowledged, and what the lane does not take (a
refused payment, CLOSE, the last payment) is carried out in order after the acks before it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.effects import PaymentReceived
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import StoreError
from bitcoind_paychan.service.server import PaymentServer
from bitcoind_paychan.store.credit import PaymentTake
from bitcoind_paychan.store.leases import FencedPayment, Lease, LocalLeases
from bitcoind_paychan.transport.stream import MessageStream
from bitcoind_paychan.wire import pb
from regtest.waiting import until
from tests.service.conftest import MemSides
from tests.service.test_settlement_fencing import opened, payment, prove, resume

T = pb.TwoWayChannelMessage
VALUE = 300_000


class GatedLeases(LocalLeases):
    """Local leases whose group commit waits at a gate (before its lease check and write)
    while `hold` is clear; `entered` counts the commits that reached it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.hold = threading.Event()
        self.hold.set()
        self.entered = 0
        self.acquired = 0  # leases taken

    def acquire(self, role: Role, contract_txid: str, holder: str) -> Lease:
        lease = super().acquire(role, contract_txid, holder)
        self.acquired += 1
        return lease

    def record_payments(self, batch: Sequence[FencedPayment],
                        takes: Sequence[PaymentTake | None] = ()) -> list[StoreError | None]:
        self.entered += 1
        self.hold.wait(30)
        return super().record_payments(batch, takes)


async def open_paid(sides: MemSides, server: PaymentServer) -> tuple[ChannelRecord, int]:
    """A channel opened and paid once on `server`, its client gone: the client's record, and
    the server's port."""
    port = (await server.listen())[1]
    return await opened(sides, port), port


async def resumed(port: int, record: ChannelRecord) -> MessageStream:
    """A raw connection holding the channel again (its proof acknowledged): open, confirmed,
    in the fast lane."""
    stream, answers = await resume(port, record)
    await prove(stream, record, answers)
    return stream


async def answers(stream: MessageStream, count: int) -> list[int | None]:
    """The types of the next `count` messages (None: the server hung up)."""
    got: list[int | None] = []
    for _ in range(count):
        message = await stream.receive(10)
        got.append(None if message is None else message.type)
    return got


async def in_one_write(sides: MemSides, frames: Callable[[ChannelRecord], list[T]],
                       count: int) -> tuple[list[int | None], ChannelRecord]:
    """`frames(record)` sent in one write on a resumed open channel: the types of the
    server's next `count` answers, and the channel it stored."""
    server = sides.server()
    record, port = await open_paid(sides, server)
    stream = await resumed(port, record)
    await stream.send_many(frames(record))
    got = await answers(stream, count)
    await stream.close()
    await server.stop()
    return got, stored(server, record)


def received(sides: MemSides) -> int:
    """How many payments the server reported (PaymentReceived) so far."""
    return sum(isinstance(e, PaymentReceived) for e in sides.events)


def stored(server: PaymentServer, record: ChannelRecord) -> ChannelRecord:
    found = server.store.get(Role.SERVER, record.contract_txid)
    assert found is not None
    return found


def test_payments_in_one_write_are_each_verified_stored_and_acknowledged_in_order(
        mem_sides: MemSides) -> None:
    got, record = asyncio.run(in_one_write(mem_sides, lambda record: [
        payment(record, record.change - n * 1_000) for n in (1, 2, 3)], 3))
    assert got == [T.PAYMENT_ACK] * 3
    assert record.change == VALUE - 1_000 - 10_000 - 3_000
    paid = [e.amount for e in mem_sides.events if isinstance(e, PaymentReceived)]
    assert paid[-3:] == [1_000, 1_000, 1_000]


def test_an_ack_waits_for_its_commit(mem_sides: MemSides) -> None:
    """The writer is held: the payments are verified and handed over, nothing is
    acknowledged; released, each is acknowledged after it is stored."""
    async def scenario() -> tuple[int, int, list[int | None], int]:
        leases = GatedLeases(mem_sides.store("server"))
        server = mem_sides.server(leases=leases)
        record, port = await open_paid(mem_sides, server)
        stream = await resumed(port, record)
        leases.hold.clear()
        entered, before = leases.entered, received(mem_sides)
        await stream.send_many([payment(record, record.change - n * 1_000) for n in (1, 2)])
        await until(lambda: leases.entered > entered, what="the commit to reach the gate")
        told = received(mem_sides)  # the acks are sent right after these, in one callback
        held_change = stored(server, record).change
        leases.hold.set()
        got = await answers(stream, 2)
        await stream.close()
        await server.stop()
        return told - before, held_change, got, stored(server, record).change

    told, held_change, got, change = asyncio.run(scenario())
    assert told == 0  # nothing reported (nor acknowledged) before the commit
    assert held_change == VALUE - 1_000 - 10_000  # nothing stored while held
    assert got == [T.PAYMENT_ACK] * 2
    assert change == VALUE - 1_000 - 10_000 - 2_000


def test_payments_in_flight_when_the_settlement_takes_the_lease_are_never_acknowledged(
        mem_sides: MemSides) -> None:
    """The payments are verified and handed to the (held) writer; the application settles
    the channel meanwhile (its lease fences the connection); released, the payments are not
    stored, nothing is acknowledged, and the settlement pays the client what was stored."""
    async def scenario() -> tuple[list[int | None], ChannelRecord, int]:
        leases = GatedLeases(mem_sides.store("server"))
        server = mem_sides.server(leases=leases)
        record, port = await open_paid(mem_sides, server)
        stream = await resumed(port, record)
        leases.hold.clear()
        entered = leases.entered
        await stream.send_many([payment(record, record.change - n * 1_000) for n in (1, 2, 3)])
        await until(lambda: leases.entered > entered, what="the commit to reach the gate")
        settling = asyncio.create_task(server.settle(record.contract_txid))
        await until(lambda: stored(server, record).status is ChannelStatus.CLOSING,
                    what="the settlement to be stored")
        leases.hold.set()
        settlement = await settling
        got = await answers(stream, 1)
        await stream.close()
        await server.stop()
        return got, stored(server, record), settlement.outputs[0].value

    got, record, client_gets = asyncio.run(scenario())
    assert got == [None]  # hung up, nothing acknowledged
    assert record.status is ChannelStatus.CLOSING
    assert record.change == client_gets == VALUE - 1_000 - 10_000


def test_payments_in_flight_when_the_client_resumes_elsewhere_are_never_acknowledged(
        mem_sides: MemSides) -> None:
    """The payments are handed to the (held) writer; the client resumes on a new connection,
    which takes the channel's lease (the old connection is hung up); released, the old
    connection's payments are not stored nor acknowledged, the new one's proof is."""
    async def scenario() -> tuple[list[int | None], list[int | None], int]:
        leases = GatedLeases(mem_sides.store("server"))
        server = mem_sides.server(leases=leases)
        record, port = await open_paid(mem_sides, server)
        old = await resumed(port, record)
        leases.hold.clear()
        entered, acquired = leases.entered, leases.acquired
        await old.send_many([payment(record, record.change - n * 1_000) for n in (1, 2)])
        await until(lambda: leases.entered > entered, what="the commit to reach the gate")
        new, answered = await resume(port, record)
        proving = asyncio.create_task(prove(new, record, answered))
        await until(lambda: leases.acquired > acquired, what="the new connection's lease")
        leases.hold.set()
        await proving  # its proof acknowledged
        got = await answers(old, 1)
        for stream in (old, new):
            await stream.close()
        await server.stop()
        return got, [m.type for m in answered], stored(server, record).change

    got, answered, change = asyncio.run(scenario())
    assert answered == [T.SERVER_VERSION, T.CHANNEL_OPEN]
    assert got == [None]  # hung up, nothing acknowledged
    assert change == VALUE - 1_000 - 10_000  # what the new connection's proof holds


def test_a_bad_payment_behind_good_ones_is_refused_after_their_acks(
        mem_sides: MemSides) -> None:
    def frames(record: ChannelRecord) -> list[T]:
        good = payment(record, record.change - 1_000)
        bad = payment(record, record.change - 2_000)
        bad.update_payment.signature = good.update_payment.signature  # signs another change
        return [good, bad, payment(record, record.change - 3_000)]

    got, record = asyncio.run(in_one_write(mem_sides, frames, 3))
    assert got == [T.PAYMENT_ACK, T.ERROR, None]
    assert record.change == VALUE - 1_000 - 10_000 - 1_000  # the good one alone


def test_close_behind_payments_settles_after_their_acks_with_every_one_in_it(
        mem_sides: MemSides) -> None:
    async def scenario() -> tuple[list[int | None], ChannelRecord, int]:
        server = mem_sides.server()
        record, port = await open_paid(mem_sides, server)
        stream = await resumed(port, record)
        await stream.send_many([payment(record, record.change - 1_000),
                                payment(record, record.change - 2_000), messages.close()])
        got: list[int | None] = []
        settlement = b""
        for _ in range(3):
            message = await stream.receive(10)
            got.append(None if message is None else message.type)
            if message is not None and message.type == T.CLOSE:
                settlement = message.settlement.tx
        await stream.close()
        await server.stop()
        return got, stored(server, record), Transaction.parse(settlement).outputs[0].value

    got, record, client_gets = asyncio.run(scenario())
    assert got == [T.PAYMENT_ACK, T.PAYMENT_ACK, T.CLOSE]
    assert record.status is ChannelStatus.CLOSING
    assert record.change == client_gets == VALUE - 1_000 - 10_000 - 2_000


def test_the_payment_using_the_channel_up_goes_on_to_the_settlement(
        mem_sides: MemSides) -> None:
    got, record = asyncio.run(in_one_write(mem_sides, lambda record: [
        payment(record, record.change - 1_000), payment(record, 0)], 3))
    assert got == [T.PAYMENT_ACK, T.PAYMENT_ACK, T.CLOSE]
    assert record.status is ChannelStatus.CLOSING and record.change == 0
