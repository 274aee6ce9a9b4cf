"""Resuming a channel: after a dropped connection, after a killed client process, and the
server's hand-over from an old connection to a new one. On the in-process chain, but for the
killed client process (a real node beside it)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.messages import DEFAULT_TIME_WINDOW
from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.errors import ChannelExists
from bitcoind_paychan.service.server import PaymentServer
from bitcoind_paychan.transport.stream import open_connection
from bitcoind_paychan.wire import pb
from tests.service.conftest import MemSides, Sides
from tests.service.test_flow import wallet_utxo

T = pb.TwoWayChannelMessage

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_resume_after_a_dropped_connection(mem_sides: MemSides, version: int) -> None:
    client = mem_sides.client()

    async def scenario() -> tuple[str, int]:
        server = mem_sides.server()
        host, port = await server.listen()
        first = await client.open(host, port, 500_000, version=version)
        for _ in range(5):
            await first.pay(2_000)
        await first.disconnect()
        second = await client.open(host, port, 500_000, version=version)
        assert second.contract_txid == first.contract_txid
        assert second.version == version
        for _ in range(5):
            await second.pay(3_000)
        settlement = await second.close()
        await server.stop()
        return settlement.txid_hex, second.paid

    settlement, paid = asyncio.run(scenario())
    assert paid == 1_000 + 5 * 2_000 + 5 * 3_000
    assert sum(p.amount for p in mem_sides.payments()) == paid  # nothing counted twice
    assert [e.resumed for e in mem_sides.opened()] == [False, True]
    mem_sides.mine(1)
    assert wallet_utxo(mem_sides.client_node, settlement, 0) == 500_000 - paid


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_resume_after_the_client_process_is_killed(sides: Sides, version: int) -> None:
    store = sides.tmp / "killed-client.db"

    async def scenario() -> tuple[str, int, int]:
        server = sides.server()
        host, port = await server.listen()
        node = sides.client_node
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.service.client_process", node.rpc_url,
            str(node.cookie_path), str(node.wallet), str(store), host, str(port), str(version),
            cwd=ROOT, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        acknowledged = {}
        for _ in range(20):
            acknowledged = json.loads(await proc.stdout.readline())
        proc.kill()  # kill -9, mid-stream
        await proc.wait()
        client = sides.client("killed-client")
        channel = await client.open(host, port, 1_000_000, version=version)
        assert channel.contract_txid == acknowledged["contract"]
        # Stored before sent: the client knows at least what the server acknowledged.
        assert channel.paid >= acknowledged["paid"]
        await channel.pay(5_000)
        settlement = await channel.close()
        await server.stop()
        return channel.contract_txid, channel.paid, settlement.outputs[0].value

    contract, paid, change = asyncio.run(scenario())
    server_record = sides.server().store.get(Role.SERVER, contract)
    assert server_record is not None and server_record.paid == paid
    assert sum(p.amount for p in sides.payments()) == paid
    assert change == 1_000_000 - paid


def test_server_drops_the_older_connection_of_a_resumed_channel(mem_sides: MemSides) -> None:
    async def scenario() -> None:
        server: PaymentServer = mem_sides.server()
        host, port = await server.listen()
        client = mem_sides.client()
        old = await client.open(host, port, 300_000)
        await old.pay(1_000)
        # Another instance on the same store (as after a restart) resumes while `old` is live.
        new = await mem_sides.client().open(host, port, 300_000)
        assert new.contract_txid == old.contract_txid
        assert await old.stream.receive(timeout=10) is None  # the server hung up on `old`
        await new.pay(1_000)
        await new.close()
        await server.stop()

    asyncio.run(scenario())
    assert sum(p.amount for p in mem_sides.payments()) == 3_000


def test_one_client_holds_several_channels_to_one_server(mem_sides: MemSides) -> None:
    async def scenario() -> list[str]:
        server = mem_sides.server()
        host, port = await server.listen()
        client = mem_sides.client()
        first = await client.open(host, port, 200_000)
        second = await client.open(host, port, 200_000, new=True)  # another, by request
        fresh = await client.open(host, port, 200_000, new=True)
        for channel in (first, second, fresh):
            await channel.pay(2_000)
        await first.disconnect()
        again = await client.resume(first.contract_txid)
        assert again.resumed
        await again.pay(1_000)
        for channel in (again, second, fresh):
            await channel.close()
        await server.stop()
        return [first.contract_txid, second.contract_txid, fresh.contract_txid,
                again.contract_txid]

    first, second, fresh, again = asyncio.run(scenario())
    assert len({first, second, fresh}) == 3
    assert again == first
    assert sum(p.amount for p in mem_sides.payments()) == 3 * 3_000 + 1_000


def test_open_never_makes_a_second_channel_nor_returns_one_of_another_value(
        mem_sides: MemSides) -> None:
    """Seen: `open` twice while a channel was live made two channels; after a restart,
    `open` of another amount returned the existing channel."""
    async def scenario() -> None:
        server = mem_sides.server()
        host, port = await server.listen()
        client = mem_sides.client()
        first = await client.open(host, port, 200_000)
        assert not first.resumed
        twice = await client.open(host, port, 200_000)
        assert twice is first and not first.resumed  # the live channel, left as it was
        with pytest.raises(ChannelExists, match=f"{first.contract_txid}.*200000 sat.*new=True"):
            await client.open(host, port, 300_000)
        await client.stop()  # a restart: only the store remembers the channel
        client.store.close()
        client = mem_sides.client()
        with pytest.raises(ChannelExists, match=first.contract_txid):
            await client.open(host, port, 300_000)
        resumed = await client.open(host, port, 200_000)
        assert resumed.contract_txid == first.contract_txid and resumed.resumed
        assert len(client.channels()) == 1
        other = await client.open(host, port, 300_000, new=True)
        assert other.contract_txid != first.contract_txid and not other.resumed
        await client.stop()
        await server.stop()

    asyncio.run(scenario())


def test_a_channel_the_server_settled_meanwhile_gives_way_to_a_new_one(mem_sides: MemSides) -> None:
    async def scenario() -> tuple[str, str]:
        server = mem_sides.server()
        host, port = await server.listen()
        client = mem_sides.client()
        old = await client.open(host, port, 300_000)
        await old.pay(5_000)
        await old.disconnect()
        await server.settle(old.contract_txid)  # while the client is away
        new = await client.open(host, port, 300_000)  # the resume is refused: a new channel
        await new.pay(2_000)
        await new.close()
        await client.stop()
        await server.stop()
        return old.contract_txid, new.contract_txid

    old, new = asyncio.run(scenario())
    assert old != new
    assert sum(p.amount for p in mem_sides.payments()) == 1_000 + 5_000 + 1_000 + 2_000


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_a_stranger_with_the_public_contract_txid_can_neither_drop_nor_close_it(
        mem_sides: MemSides, version: int) -> None:
    """Seen: anyone naming a victim's (public) contract txid in CLIENT_VERSION got the
    channel: the victim was dropped and the stranger's CLOSE settled the channel early."""
    async def scenario() -> tuple[list[int], ChannelStatus, str]:
        server = mem_sides.server()
        host, port = await server.listen()
        victim = await mem_sides.client().open(host, port, 300_000, version=version)
        await victim.pay(1_000)
        stranger = await open_connection(host, port, 10)
        await stranger.send_many([messages.client_version(version, DEFAULT_TIME_WINDOW,
                                                          victim.contract_txid)])
        seen = [(await stranger.receive(10)) for _ in range(2)]
        await victim.pay(1_000)  # still connected: the stranger did not displace it
        await stranger.send_many([messages.close()])
        answer = await stranger.receive(10)
        assert answer is not None and await stranger.receive(10) is None  # refused, hung up
        await victim.pay(1_000)
        record = server.store.get(Role.SERVER, victim.contract_txid)
        assert record is not None
        spender = await server.ports.chain.spender(victim.contract_txid, 0)
        assert spender is None  # nothing settled it
        settlement = await victim.close()
        await server.stop()
        await stranger.close()
        return ([int(m.type) for m in seen if m] + [int(answer.type)], record.status,
                settlement.txid_hex)

    types, status, _ = asyncio.run(scenario())
    assert types == [T.SERVER_VERSION, T.CHANNEL_OPEN, T.ERROR]
    assert status is ChannelStatus.OPEN
    assert sum(p.amount for p in mem_sides.payments()) == 4_000


def test_a_resumed_connection_that_never_proves_itself_times_out(mem_sides: MemSides) -> None:
    """Seen: a resumed connection that never proved its key never timed out, so anyone who
    knows an open channel's txid could hold connections indefinitely. It gets its own
    timeout, longer than the handshake's (here both are short)."""
    async def scenario() -> tuple[list[int], str, bool]:
        server = mem_sides.server(handshake_timeout=0.2, resume_timeout=0.5)
        host, port = await server.listen()
        owner = await mem_sides.client().open(host, port, 300_000)
        stranger = await open_connection(host, port, 10)
        await stranger.send_many([messages.client_version(owner.version, DEFAULT_TIME_WINDOW,
                                                          owner.contract_txid)])
        seen = [await stranger.receive(30) for _ in range(3)]  # silent until refused
        gone = await stranger.receive(30) is None
        await owner.pay(1_000)  # the channel is not hurt
        await server.stop()
        await stranger.close()
        last = seen[-1]
        return ([int(m.type) for m in seen if m], last.error.explanation if last else "", gone)

    types, explanation, gone = asyncio.run(scenario())
    assert types == [T.SERVER_VERSION, T.CHANNEL_OPEN, T.ERROR] and gone
    assert "within 0.5 s" in explanation  # the resume timeout, not the handshake's


def test_a_payment_accepted_on_one_connection_is_not_accepted_again_by_a_resuming_one(
        mem_sides: MemSides) -> None:
    """Seen: a client resumed on a second connection (loaded: change C), paid on the first
    (stored, acknowledged: change C - 1000), then sent that same payment on the second as its
    resume: the second connection took it as a new payment of 1000 and acknowledged it too.
    Now the resume takes the channel's lease, sees the channel moved on since it was loaded,
    and refuses (ERROR: resume again), storing and acknowledging nothing."""
    async def scenario() -> pb.TwoWayChannelMessage | None:
        server = mem_sides.server()
        host, port = await server.listen()
        client = mem_sides.client()
        first = await client.open(host, port, 300_000, version=2)
        resumer = await open_connection(host, port, 10)
        await resumer.send_many([messages.client_version(2, DEFAULT_TIME_WINDOW,
                                                         first.contract_txid)])
        for _ in range(2):  # SERVER_VERSION, CHANNEL_OPEN: the channel is loaded
            assert await resumer.receive(10) is not None
        await first.pay(1_000)  # stored and acknowledged on the first connection
        record = client.store.get(Role.CLIENT, first.contract_txid)
        assert record is not None
        await resumer.send_many([messages.update_payment(record.change, record.signature)])
        answer = await resumer.receive(10)
        assert await resumer.receive(10) is None  # and hung up
        await resumer.close()
        await server.stop()
        return answer

    answer = asyncio.run(scenario())
    assert answer is not None and answer.type == T.ERROR
    assert "resume again" in answer.error.explanation
    assert [p.amount for p in mem_sides.payments()] == [1_000, 1_000]  # opening, then one payment
