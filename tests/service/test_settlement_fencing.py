"""One settlement per channel, and no payment acknowledged after it (issue 19), on one
instance (SQLite, local leases) and on several sharing a real PostgreSQL, on the in-process
chain: each interleaving driven by the test's own gate on the settling instance's payout
address (the node call a settlement awaits after it took the lease and read the channel),
never by timing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.effects import ChannelClosed
from bitcoind_paychan.channel.machine import resume_digest
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import LocalProtocolError, StoreError
from bitcoind_paychan.service.server import PaymentServer, ServerEvent
from bitcoind_paychan.store import ChannelStore, open_store
from bitcoind_paychan.store.leases import ClusterPolicy, Leases, leases_for
from bitcoind_paychan.transport.stream import MessageStream, open_connection
from bitcoind_paychan.wire import pb
from regtest.memnode import MemNode
from regtest.waiting import until
from tests.service.conftest import FAST, MemSides

T = pb.TwoWayChannelMessage
VALUE = 300_000
HOUR = 3600


class Gate:
    """Holds every settlement at its payout address (after its lease and its read) until
    `release`; counts how many got there."""

    def __init__(self) -> None:
        self.entered, self.release = asyncio.Event(), asyncio.Event()
        self.asked = 0


class GatedWallet(MemNode):
    """The server's node and wallet; `payout_script` waits at the gate first."""

    def __init__(self, node: MemNode, gate: Gate) -> None:
        super().__init__(node.memchain, node.wallet)
        self.gate = gate

    async def payout_script(self) -> bytes:
        self.gate.asked += 1
        self.gate.entered.set()
        await self.gate.release.wait()
        return await super().payout_script()


@dataclass
class Cluster:
    """Three server slots: one server thrice (one instance), or three instances."""

    sides: MemSides
    gate: Gate
    servers: list[PaymentServer]
    events: list[ServerEvent] = field(default_factory=list)
    now: list[float] = field(default_factory=lambda: [time.time()])

    async def start(self) -> list[int]:
        ports = []
        for server in dict.fromkeys(self.servers):
            ports.append((await server.listen())[1])
        return ports * 3 if len(ports) == 1 else ports

    async def stop(self) -> None:
        for server in dict.fromkeys(self.servers):
            await server.stop()

    def settlements(self) -> list[Transaction]:
        return [e.settlement for e in self.events if isinstance(e, ChannelClosed)]


@pytest.fixture(params=["one instance", "several instances"])
def cluster(request: pytest.FixtureRequest, mem_sides: MemSides) -> Iterator[Cluster]:
    gate = Gate()
    made = Cluster(mem_sides, gate, [])

    def server(store: ChannelStore, leases: Leases | None = None) -> PaymentServer:
        wallet = GatedWallet(mem_sides.server_node, gate)
        return PaymentServer(wallet, store, on_event=made.events.append, autopilot=FAST,
                             poll_interval=mem_sides.poll_interval, review_interval=0.5,
                             leases=leases, clock=lambda: made.now[0])

    if request.param == "one instance":
        made.servers = [server(mem_sides.store("server"))] * 3
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        for name in "abc":
            store = open_store(engine="postgresql", dsn=dsn)
            made.servers.append(server(store, leases_for(store, ClusterPolicy(
                name, takeover_after=1.0))))
    yield made
    for store in {id(s.store): s.store for s in made.servers}.values():
        store.close()


async def opened(sides: MemSides, port: int) -> ChannelRecord:
    """A channel opened and paid on the server at `port`, its client gone (the client's
    stored record: its key signs what the test sends as the client)."""
    client = sides.client()
    channel = await client.open("127.0.0.1", port, VALUE)
    await channel.pay(10_000)
    await channel.disconnect()
    await client.stop()
    record = client.store.get(Role.CLIENT, channel.contract_txid)
    assert record is not None
    return record


async def resume(port: int, record: ChannelRecord, answers: int = 2
                 ) -> tuple[MessageStream, list[T]]:
    """CLIENT_VERSION naming the channel; the server's first `answers` messages."""
    stream = await open_connection("127.0.0.1", port, 10)
    await stream.send_many([messages.client_version(record.version, 24 * HOUR,
                                                    record.contract_txid)])
    got: list[T] = []
    for _ in range(answers):
        message = await stream.receive(10)
        assert message is not None, got
        got.append(message)
    return stream, got


def payment(record: ChannelRecord, change: int, challenge: bytes = b"") -> T:
    """The client's UPDATE_PAYMENT (with the v3 resume proof for `challenge`)."""
    proof = record.key.sign(resume_digest(challenge, record.contract_txid)) if challenge else b""
    return messages.update_payment(change, record.contract.sign_payment(record.key, change),
                                   resume_proof=proof)


async def prove(stream: MessageStream, record: ChannelRecord, answers: list[T]) -> None:
    """The resume's first payment (the last one again, with the proof): acknowledged, the
    connection now holds the channel's lease."""
    challenge = answers[0].server_version.resume_challenge
    await stream.send_many([payment(record, record.change, challenge)])
    ack = await stream.receive(10)
    assert ack is not None and ack.type == T.PAYMENT_ACK


async def pay_on(stream: MessageStream, record: ChannelRecord, times: int = 3) -> int:
    """Pay 1,000 sat `times` over, until one is not acknowledged; the change last acked."""
    acked = record.change
    for _ in range(times):
        await stream.send_many([payment(record, acked - 1_000)])
        answer = await stream.receive(10)
        if answer is None or answer.type != T.PAYMENT_ACK:
            break
        acked -= 1_000
    return acked


def test_a_resume_that_takes_the_lease_while_a_settlement_awaits_the_node_fences_it(
        cluster: Cluster) -> None:
    """Seen 1: the settler took the lease and read the channel, then awaited the node; the
    client resumed elsewhere with a newer lease and paid. The settlement is not stored nor
    broadcast (its lease is gone), and every payment acknowledged stays collectable."""
    async def scenario() -> tuple[BaseException | None, int, ChannelRecord | None,
                                  Transaction | None]:
        ports = await cluster.start()
        settler, resumer = cluster.servers[0], cluster.servers[1]
        record = await opened(cluster.sides, ports[0])
        settling = asyncio.create_task(settler.settle(record.contract_txid))
        await cluster.gate.entered.wait()  # lease taken, channel read, node asked
        stream, answers = await resume(ports[1], record)
        assert [m.type for m in answers] == [T.SERVER_VERSION, T.CHANNEL_OPEN]
        await prove(stream, record, answers)
        cluster.gate.release.set()  # the settler goes on
        outcome = (await asyncio.gather(settling, return_exceptions=True))[0]
        acked = await pay_on(stream, record)  # each stored, then acknowledged
        await stream.close()
        stored = resumer.store.get(Role.SERVER, record.contract_txid)
        spender = await settler.ports.chain.spender(record.contract_txid,
                                                    record.contract.outpoint.index)
        await cluster.stop()
        return (outcome if isinstance(outcome, BaseException) else None, acked, stored,
                spender)

    refused, acked, stored, spender = asyncio.run(scenario())
    # Money first: no settlement pays the client more than the change it was acknowledged.
    assert spender is None or spender.outputs[0].value <= acked
    assert isinstance(refused, StoreError) and "lease" in str(refused)
    assert spender is None and cluster.settlements() == []
    assert stored is not None and stored.status is ChannelStatus.OPEN
    assert stored.change == acked == VALUE - 1_000 - 10_000 - 3_000


def test_the_autopilots_settlement_and_a_resume_meanwhile_lose_no_acknowledged_payment(
        cluster: Cluster) -> None:
    """Seen 1 as reported: the autopilot settles at the deadline and awaits its node after
    taking the lease and reading the channel; the client resumes (a newer lease); then a
    settlement is stored and broadcast, and the client pays on. The settlement on the chain
    pays the client no more than the change it was acknowledged: the fenced attempt is not
    stored, the next review's is, and no payment is acknowledged after it."""
    async def scenario() -> tuple[int, int, Transaction]:
        ports = await cluster.start()
        record = await opened(cluster.sides, ports[0])
        cluster.sides.chain.mocktime = record.contract.expiry - FAST.settle_margin + 60
        cluster.sides.mine(1)  # the deadline: an autopilot settles
        await cluster.gate.entered.wait()  # lease taken, channel read, node asked
        stream, answers = await resume(ports[1], record)
        await prove(stream, record, answers)
        cluster.gate.release.set()
        await until(lambda: cluster.settlements(), what="the autopilot to settle")
        acked = await pay_on(stream, record)  # nothing more may be acknowledged
        await stream.close()
        await cluster.stop()
        return record.change, acked, cluster.settlements()[-1]

    change, acked, settlement = asyncio.run(scenario())
    assert settlement.outputs[0].value <= acked  # every acknowledged payment is in it
    assert acked == change == settlement.outputs[0].value
    assert len(cluster.settlements()) == 1


def test_a_resume_that_finds_the_channel_settled_since_it_loaded_it_answers_with_the_settlement(
        cluster: Cluster) -> None:
    """Seen 1, the other order: the settlement is stored CLOSING while the resume (loaded OPEN)
    waits for its proof. Its lease's re-read finds it settling: it sends that settlement
    (CLOSE), and stores and acknowledges nothing more."""
    async def scenario() -> tuple[list[T | None], Transaction, ChannelRecord | None]:
        ports = await cluster.start()
        settler, resumer = cluster.servers[0], cluster.servers[1]
        record = await opened(cluster.sides, ports[0])
        stream, answers = await resume(ports[1], record)  # loaded: still open
        assert [m.type for m in answers] == [T.SERVER_VERSION, T.CHANNEL_OPEN]
        cluster.gate.release.set()
        settlement = await settler.settle(record.contract_txid)
        challenge = answers[0].server_version.resume_challenge
        await stream.send_many([payment(record, record.change - 1_000, challenge),
                                payment(record, record.change - 2_000)])
        got = [await stream.receive(10), await stream.receive(10)]
        await stream.close()
        stored = resumer.store.get(Role.SERVER, record.contract_txid)
        await cluster.stop()
        return got, settlement, stored

    got, settlement, stored = asyncio.run(scenario())
    close = got[0]
    assert close is not None and close.type == T.CLOSE, got
    assert close.settlement.tx == settlement.serialize()
    assert got[1] is None  # hung up: nothing acknowledged
    assert stored is not None and stored.status is ChannelStatus.CLOSING
    assert stored.change == VALUE - 1_000 - 10_000  # nothing stored after the settlement
    assert stored.settlement_tx == settlement.serialize()


def test_strangers_resuming_near_expiry_and_a_close_together_make_one_settlement(
        cluster: Cluster) -> None:
    """Seen 2: within two hours of expiry a resume settles at once, with no proof. Now every
    path claims the channel's settling duty first: while one settles, the other resumes are
    told so (fencing nobody) and the application's close is refused; exactly one settlement
    is built and broadcast, and a later resume is answered with it."""
    async def scenario() -> tuple[list[T], list[T], Transaction | None, list[T], str]:
        ports = await cluster.start()
        record = await opened(cluster.sides, ports[0])
        cluster.now[0] = record.contract.expiry - HOUR  # every server's clock: near expiry
        first, first_answers = await resume(ports[0], record, 1)  # a stranger: the txid only
        await cluster.gate.entered.wait()  # it claimed the duty and is settling
        second, second_answers = await resume(ports[1], record)
        with pytest.raises(LocalProtocolError, match="being settled") as closing:
            await cluster.servers[2].settle(record.contract_txid)
        cluster.gate.release.set()
        close = await first.receive(10)
        assert close is not None
        first_answers.append(close)
        for stream in (first, second):
            await stream.close()
        spender = await cluster.servers[0].ports.chain.spender(
            record.contract_txid, record.contract.outpoint.index)
        late, late_answers = await resume(ports[2], record)
        await late.close()
        await cluster.stop()
        return first_answers, second_answers, spender, late_answers, str(closing.value)

    first, second, spender, late, _ = asyncio.run(scenario())
    assert cluster.gate.asked == 1  # one settlement was built
    assert len(cluster.settlements()) == 1
    (settlement,) = cluster.settlements()
    assert spender is not None and spender.txid == settlement.txid
    assert [m.type for m in first] == [T.SERVER_VERSION, T.CLOSE]
    assert first[1].settlement.tx == settlement.serialize()
    assert [m.type for m in second] == [T.SERVER_VERSION, T.ERROR]
    assert "being settled" in second[1].error.explanation
    assert [m.type for m in late] == [T.SERVER_VERSION, T.CLOSE]
    assert late[1].settlement.tx == settlement.serialize()


def test_a_refused_settlement_stays_the_channels_one_and_the_channel_stays_closing(
        cluster: Cluster) -> None:
    """Seen 2: a settlement the node refused moved the channel back to OPEN (then another
    settlement, to another payout address, could follow). Now it stays stored, CLOSING: the
    autopilot broadcasts it again or sees what spent the contract, never reopens it."""
    async def scenario() -> tuple[Transaction, Transaction, list[ChannelStatus | None]]:
        ports = await cluster.start()
        settler = cluster.servers[0]
        record = await opened(cluster.sides, ports[0])
        settling = asyncio.create_task(settler.settle(record.contract_txid))
        await cluster.gate.entered.wait()
        rival = await rival_settlement(cluster, record.contract_txid)  # another spender wins
        cluster.gate.release.set()
        settlement = await settling
        statuses = [status(settler, record.contract_txid)]
        await settler.watcher.review_all()  # sees the rival in the mempool
        statuses.append(status(settler, record.contract_txid))
        await cluster.stop()
        return settlement, rival, statuses

    settlement, rival, statuses = asyncio.run(scenario())
    assert settlement.txid != rival.txid
    assert statuses == [ChannelStatus.CLOSING, ChannelStatus.CLOSING]
    assert cluster.gate.asked == 1


async def rival_settlement(cluster: Cluster, txid: str) -> Transaction:
    """A settlement of the stored channel at a high fee, to another address, in the mempool
    (what a rival settler broadcast first), through the node past the servers' gate."""
    record = cluster.servers[0].store.get(Role.SERVER, txid)
    assert record is not None
    node = cluster.sides.server_node
    payout = await node.payout_script()
    contract = record.contract
    fee = contract.settlement_fee(record.change, payout, 20_000)
    draft = contract.settlement_draft(record.change, record.paid - fee, payout)
    rival = contract.sign_settlement(draft, record.signature, record.key)
    await node.broadcast(rival)
    return rival


def status(server: PaymentServer, txid: str) -> ChannelStatus | None:
    record = server.store.get(Role.SERVER, txid)
    return None if record is None else record.status
