"""Several server instances on one PostgreSQL store (active-active): any instance serves any
channel, one connection at a time across all of them; each deadline settled once; a killed
instance's channels settled by a survivor. Real PostgreSQL; the in-process chain, but for the
killed instance (its own process, beside a real regtest node)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest

from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.effects import ChannelClosed, PaymentReceived
from bitcoind_paychan.channel.messages import DEFAULT_TIME_WINDOW
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.errors import ChannelFailed
from bitcoind_paychan.node.ports import NodePorts
from bitcoind_paychan.service.server import PaymentServer, ServerEvent
from bitcoind_paychan.store import open_store
from bitcoind_paychan.store.leases import ClusterPolicy, leases_for
from bitcoind_paychan.transport.stream import open_connection
from bitcoind_paychan.wire import pb
from regtest.node import free_port
from regtest.waiting import until
from tests.service.conftest import FAST, Duo, MemSides, Sides
from tests.service.test_crash import ROOT, Side

T = pb.TwoWayChannelMessage
VALUE = 300_000


def instance(sides: Duo, dsn: str, name: str, events: list[ServerEvent]) -> PaymentServer:
    """A server instance on the shared database `dsn`."""
    store = open_store(engine="postgresql", dsn=dsn)
    return PaymentServer(sides.server_ports(), store,
                         on_event=events.append, autopilot=FAST, poll_interval=0.2,
                         review_interval=0.5,
                         leases=leases_for(store, ClusterPolicy(name, takeover_after=1.0)))


def paid(events: list[ServerEvent]) -> list[int]:
    return [e.amount for e in events if isinstance(e, PaymentReceived)]


def test_a_client_resuming_on_another_instance_fences_the_first(
        mem_sides: MemSides, postgres_dsn: str) -> None:
    on_a: list[ServerEvent] = []
    on_b: list[ServerEvent] = []

    async def scenario() -> tuple[int, int]:
        a, b = (instance(mem_sides, postgres_dsn, "a", on_a),
                instance(mem_sides, postgres_dsn, "b", on_b))
        host, port_a = await a.listen()
        _, port_b = await b.listen()
        client = mem_sides.client()
        channel = await client.open(host, port_a, VALUE, version=2)
        await channel.pay(1_000)  # on a
        txid = channel.contract_txid
        # The client resumes on b (as after a balancer sent it there) while a still serves it.
        last = client.store.get(Role.CLIENT, txid)
        assert last is not None
        resumed = await open_connection(host, port_b, 10)
        await resumed.send_many([messages.client_version(2, DEFAULT_TIME_WINDOW, txid)])
        for _ in range(2):  # SERVER_VERSION, CHANNEL_OPEN
            assert await resumed.receive(10) is not None
        await resumed.send_many([messages.update_payment(last.change, last.signature)])
        ack = await resumed.receive(10)  # the proof: b holds the lease now
        assert ack is not None and ack.type == T.PAYMENT_ACK
        with pytest.raises(ChannelFailed, match="lost the channel's lease"):
            await channel.pay(1_000)  # a can no longer store a payment for it
        signed = client.store.get(Role.CLIENT, txid)  # stored before it was sent to a
        assert signed is not None and signed.change == last.change - 1_000
        await resumed.send_many([messages.update_payment(signed.change, signed.signature)])
        ack = await resumed.receive(10)  # b takes it: accepted once, by one instance
        assert ack is not None and ack.type == T.PAYMENT_ACK
        stored = b.store.get(Role.SERVER, txid)
        assert stored is not None
        logged = len(b.store.payments(Role.SERVER, txid))
        await resumed.close()
        for service in (client, a, b):
            await service.stop()
        return VALUE - stored.change, logged

    taken, logged = asyncio.run(scenario())
    assert paid(on_a) == [1_000, 1_000] and paid(on_b) == [1_000]  # opening, then one each
    assert taken == 3_000 and logged == 3


def test_a_deadline_settlement_is_done_by_one_instance(
        mem_sides: MemSides, postgres_dsn: str) -> None:
    on_a: list[ServerEvent] = []
    on_b: list[ServerEvent] = []

    async def scenario() -> list[str]:
        a, b = (instance(mem_sides, postgres_dsn, "a", on_a),
                instance(mem_sides, postgres_dsn, "b", on_b))
        host, port = await a.listen()
        await b.listen()
        client = mem_sides.client()
        channel = await client.open(host, port, VALUE)
        await channel.pay(10_000)
        txid = channel.contract_txid
        mem_sides.mine(1)  # b learns of a's channel
        await until(lambda: txid in b.watcher.index, what="b to watch a's channel")
        record = channel.record
        mem_sides.chain.mocktime = record.contract.expiry - FAST.settle_margin + 60
        mem_sides.mine(1)  # both reach its deadline
        await until(lambda: closed(on_a + on_b), what="an instance to settle")
        mem_sides.mine(1)
        await until(lambda: status(a, txid) is ChannelStatus.SETTLED, what="settled")
        for service in (client, a, b):
            await service.stop()
        return closed(on_a + on_b)

    assert len(asyncio.run(scenario())) == 1  # one settlement, by one instance


def closed(events: list[ServerEvent]) -> list[str]:
    return [e.settlement.txid_hex for e in events if isinstance(e, ChannelClosed)]


def status(server: PaymentServer, txid: str) -> ChannelStatus | None:
    record = server.store.get(Role.SERVER, txid)
    return None if record is None else record.status


async def start_instance(sides: Sides, dsn: str, name: str, port: int) -> Side:
    """An instance in a process of its own (for kill -9)."""
    node = sides.tmp / f"{name}.node.json"
    node.write_text(json.dumps({"url": sides.server_node.rpc_url,
                                "wallet": sides.server_node.wallet,
                                "cookie": str(sides.server_node.cookie_path)}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.service.side_process", "server", str(node), dsn,
        str(port), "--instance", name, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    side = Side(proc)
    await side.wait_for("listening")
    return side


def test_a_killed_instances_channel_is_settled_by_the_survivor_after_the_takeover_time(
        one_node: Sides, postgres_dsn: str) -> None:
    """The killed instance had claimed the channel's settlement (as if killed while settling
    it): the survivor leaves it while the claim's owner may be alive, then takes it over."""
    sides = one_node
    on_b: list[ServerEvent] = []

    async def scenario() -> tuple[Any, int]:
        port = free_port()
        a = await start_instance(sides, postgres_dsn, "a", port)
        b = instance(sides, postgres_dsn, "b", on_b)
        await b.listen()
        client = sides.client()
        channel = await client.open("127.0.0.1", port, VALUE)
        for _ in range(3):
            await channel.pay(10_000)
        await a.kill()  # SIGKILL, with its client connected
        doomed = leases_for(open_store(engine="postgresql", dsn=postgres_dsn),
                            ClusterPolicy("a", takeover_after=1.0))
        assert doomed.claim(f"settle:{channel.contract_txid}")  # its last beat, then silence
        record = channel.record
        sides.server_node.set_mocktime(record.contract.expiry - FAST.settle_margin + 60)
        await asyncio.to_thread(sides.server_node.mine, 1)
        await until(lambda: closed(on_b), what="the survivor to settle the killed one's channel")
        settlement = next(e.settlement for e in on_b if isinstance(e, ChannelClosed))
        await client.stop()
        await b.stop()
        return settlement, VALUE - record.change

    settlement, acknowledged = asyncio.run(scenario())
    # Every payment the killed instance acknowledged is in the survivor's settlement.
    assert VALUE - settlement.outputs[0].value >= acknowledged == 31_000


class Held:
    """A broadcaster that holds every broadcast while `holding` (an instance frozen right
    after it stored R, before its broadcast and its ACK)."""

    def __init__(self, node: Any) -> None:
        self.node, self.holding, self.held = node, False, asyncio.Event()

    async def broadcast(self, tx: Any) -> str:
        if self.holding:
            self.held.set()
            await asyncio.Event().wait()  # until the instance is stopped
        return str(await self.node.broadcast(tx))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.node, name)


def test_a_reanchor_taken_over_by_another_instance_finishes_once(
        mem_sides: MemSides, postgres_dsn: str) -> None:
    """Rule 3 with several instances: instance a stores the client's R (complete, under the
    channel's lease) and is stopped before it broadcasts R or acknowledges it. The client
    resumes on instance b (the balancer's choice), re-sends R and gets the ACK (b finds it
    stored: idempotent); b's watcher broadcasts R, promotes the channel once (its duty
    claimed) and tells the client; payments go on, on the new contract."""
    async def scenario() -> tuple[ChannelRecord, list[int], int]:
        held = Held(mem_sides.server_ports())
        store_a = open_store(engine="postgresql", dsn=postgres_dsn)
        a = PaymentServer(NodePorts.of(held, broadcaster=held), store_a,
                          ServerPolicy(reanchoring=True), autopilot=FAST, poll_interval=0.2,
                          review_interval=0.5,
                          leases=leases_for(store_a, ClusterPolicy("a", takeover_after=1.0)))
        host, port = await a.listen()
        client = mem_sides.client(policy=ClientPolicy(VALUE, reanchoring=True))
        channel = await client.open(host, port, VALUE, version=3)
        mem_sides.mine(1)  # the contract: a's next broadcast is R's
        await channel.pay(10_000)
        held.holding = True
        reanchoring = asyncio.ensure_future(channel.reanchor(0, 2 * 24 * 3600))
        await held.held.wait()  # R stored by a, neither broadcast nor acknowledged
        stored = a.store.get(Role.SERVER, channel.channel_id)
        assert stored is not None and stored.pending is not None and stored.pending.complete
        await a.stop(grace=0)
        with pytest.raises(ChannelFailed):
            await reanchoring
        store_b = open_store(engine="postgresql", dsn=postgres_dsn)
        b = PaymentServer(mem_sides.server_ports(), store_b, ServerPolicy(reanchoring=True),
                          autopilot=FAST, poll_interval=0.2, review_interval=0.5,
                          leases=leases_for(store_b, ClusterPolicy("b", takeover_after=1.0)))
        await b.listen(host, port)  # the balancer sends the client to b
        resumed = await client.open(host, port, VALUE)  # re-sends R: b acknowledges it
        r_txid = bytes.fromhex(stored.pending.txid)[::-1]
        await until(lambda: r_txid in mem_sides.chain.mempool, what="b to broadcast R")
        mem_sides.mine(1)
        await until(lambda: (b.store.get(Role.SERVER, channel.channel_id) or stored
                             ).generation == 1, what="b's promotion")
        await resumed.pay(3_000)  # crosses REANCHOR_LOCKED
        await resumed.pay(4_000)
        record = resumed.record
        generations = [g.generation for g in b.store.generations(Role.SERVER,
                                                                 channel.channel_id)]
        server = b.store.get(Role.SERVER, channel.channel_id)
        assert server is not None
        for service in (client, b):
            await service.stop()
        return record, generations, server.change

    record, generations, server_change = asyncio.run(scenario())
    assert record.generation == 1 and generations == [0]  # promoted once
    assert server_change == record.change
