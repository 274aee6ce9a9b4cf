"""The server answers bad input with the right ERROR, loses nothing, and keeps serving. Its
decisions run on the in-process chain; the node's own refusals, a node that stops, and the
cap on contract checks (which the node answers) on real nodes."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable

import pytest

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.errors import ChannelFailed, ErrorCode
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind
from bitcoind_paychan.service.client import Channel
from bitcoind_paychan.service.server import PaymentServer, ServerManager
from bitcoind_paychan.store import SQLiteStore
from bitcoind_paychan.transport.limits import PeerLimits
from bitcoind_paychan.transport.stream import open_connection
from bitcoind_paychan.wire import error_code, pb
from regtest.node import RegtestNode
from regtest.stranger import fake_open
from regtest.waiting import until
from tests.conftest import config_for
from tests.service.carried import Dialer
from tests.service.conftest import FAST, MemSides, Sides

T = pb.TwoWayChannelMessage


async def answer(host: str, port: int, frames: list[bytes]) -> tuple[ErrorCode, bool]:
    """Send raw frames; return the ERROR code the server sent and whether it then hung up."""
    stream = await open_connection(host, port, 10)
    stream._writer.write(b"".join(frames))
    reply = await stream.receive(timeout=10)
    while reply is not None and reply.type != T.ERROR:
        reply = await stream.receive(timeout=10)
    assert reply is not None, "the server hung up without an ERROR"
    hung_up = await stream.receive(timeout=10) is None
    await stream.close()
    return error_code(reply.error), hung_up


def frame(message: T) -> bytes:
    payload = message.SerializeToString()
    return struct.pack(">i", len(payload)) + payload


def test_bad_input_gets_the_right_error_while_a_good_channel_keeps_paying(
        mem_sides: MemSides) -> None:
    async def scenario() -> tuple[dict[str, tuple[ErrorCode, bool]], Channel]:
        server = mem_sides.server()
        server.handshake_timeout = 0.5
        host, port = await server.listen()
        good = await mem_sides.client().open(host, port, 500_000)
        cases = {
            "garbage": [struct.pack(">i", 5) + b"\xff\xff\xff\xff\xff"],
            "oversized frame": [struct.pack(">i", 40_000)],
            "negative length": [struct.pack(">i", -1)],
            "wrong order": [frame(messages.update_payment(1, b"\x30"))],
            "unknown version": [frame(messages.client_version(9, 86_340, None))],
            "second hello": [frame(messages.client_version(2, 86_340, None))] * 2,
            "silence": [],
        }
        results = {}
        for name, frames in cases.items():
            results[name] = await answer(host, port, frames)
            await good.pay(1_000)  # the good channel is untouched
        await good.close()
        await server.stop()
        return results, good

    results, good = asyncio.run(scenario())
    assert results == {
        "garbage": (ErrorCode.SYNTAX_ERROR, True),
        "oversized frame": (ErrorCode.SYNTAX_ERROR, True),
        "negative length": (ErrorCode.SYNTAX_ERROR, True),
        "wrong order": (ErrorCode.SYNTAX_ERROR, True),
        "unknown version": (ErrorCode.NO_ACCEPTABLE_VERSION, True),
        "second hello": (ErrorCode.SYNTAX_ERROR, True),
        "silence": (ErrorCode.TIMEOUT, True),
    }
    assert good.paid == 1_000 + 7 * 1_000


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_bad_payments_are_refused_and_nothing_is_lost(mem_sides: MemSides, version: int) -> None:
    async def scenario() -> tuple[list[ErrorCode], int, int]:
        server = mem_sides.server(ServerPolicy(min_increment=100))
        host, port = await server.listen()
        client = mem_sides.client()
        channel = await client.open(host, port, 500_000, version=version)
        await channel.pay(10_000)
        record = channel.record
        contract, key = record.contract, record.key
        forged = {
            "bad signature": messages.update_payment(record.change - 5_000, bytes(70) + b"\x83"),
            "wrong key": messages.update_payment(
                record.change - 5_000,
                contract.sign_payment(PrivateKey.generate(), record.change - 5_000)),
            "value to server decreases": messages.update_payment(
                record.change + 5_000, contract.sign_payment(key, record.change + 5_000)),
            "dust change": messages.update_payment(100, contract.sign_payment(key, 100)),
            "below the minimum increment": messages.update_payment(
                record.change - 10, contract.sign_payment(key, record.change - 10)),
        }
        await channel.disconnect()
        codes = []
        for message in forged.values():
            resumed = await client.open(host, port, 500_000, version=version)
            await resumed.stream.send(message)
            reply = await resumed.stream.receive(timeout=10)
            assert reply is not None and reply.type == T.ERROR
            codes.append(error_code(reply.error))
            assert await resumed.stream.receive(timeout=10) is None
            await resumed.disconnect()
        stored = server.store.get(Role.SERVER, record.contract_txid)
        assert stored is not None
        again = await client.open(host, port, 500_000, version=version)
        await again.pay(2_000)
        await again.close()
        await server.stop()
        return codes, stored.paid, again.paid

    codes, paid_when_refused, paid = asyncio.run(scenario())
    assert codes == [ErrorCode.BAD_TRANSACTION] * 5
    assert paid_when_refused == 11_000
    assert paid == 13_000



def test_a_strangers_fake_contract_leaves_no_row_and_is_a_bad_transaction(
        mem_sides: MemSides) -> None:
    """Fake segwit inputs, the stranger's own key, a valid initial payment: the node would
    not take the contract, so nothing is stored (it used to leave a FAILED row forever)."""
    async def scenario() -> tuple[list[ErrorCode | None], list[str], str]:
        server = mem_sides.server()
        host, port = await server.listen()
        good = await mem_sides.client().open(host, port, 500_000)
        codes = [await fake_open(host, port, version) for version in (2, 3, 3)]
        await good.pay(1_000)
        stored = [r.contract_txid for r in server.store.channels()]
        await server.stop()
        return codes, stored, good.record.contract_txid

    codes, stored, good = asyncio.run(scenario())
    assert codes == [ErrorCode.BAD_TRANSACTION] * 3
    assert stored == [good]


def test_node_unreachable_while_a_client_opens_is_retryable_and_stores_nothing(
        sides: Sides) -> None:
    async def scenario() -> tuple[str, list[str]]:
        server = sides.server()
        host, port = await server.listen()
        sides.server_node.stop()
        with pytest.raises(ChannelFailed) as failed:
            await sides.client().open(host, port, 500_000)
        stored = [r.contract_txid for r in server.store.channels()]
        await server.stop()
        return str(failed.value), stored

    message, stored = asyncio.run(scenario())
    assert "OTHER" in message and "retry later" in message, message
    assert "unavailable" in message and "nothing was stored" in message
    assert stored == []


async def hung_up_at_once(host: str, port: int) -> bool:
    """Connect and say hello: did the server hang up without answering?"""
    stream = await open_connection(host, port, 10)
    try:
        await stream.send(messages.client_version(2, messages.DEFAULT_TIME_WINDOW, None))
        return await stream.receive(timeout=10) is None
    except ConnectionError:
        return True
    finally:
        await stream.close()


def test_per_peer_limits_hang_up_on_a_flood_and_spare_the_paying_channel(
        mem_sides: MemSides, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[list[bool], bool, bool]:
        server = mem_sides.server(limits=PeerLimits(max_connections_per_minute=8,
                                                max_handshakes_per_ip=2))
        host, port = await server.listen()
        good = await mem_sides.client().open(host, port, 500_000)  # 1 connection
        idle = [await open_connection(host, port, 10) for _ in range(2)]  # 2 handshakes
        for stream in idle:
            await stream.send(messages.client_version(2, messages.DEFAULT_TIME_WINDOW, None))
            assert await stream.receive(timeout=10) is not None  # SERVER_VERSION: admitted
        over_handshakes = await hung_up_at_once(host, port)  # 4th connection
        for stream in idle:
            await stream.close()
        await good.pay(1_000)
        flood = [await hung_up_at_once(host, port) for _ in range(30)]  # 5 left this minute
        await good.pay(1_000)  # the open channel keeps paying
        await server.stop()
        return flood, over_handshakes, good.paid == 3_000

    with caplog.at_level(logging.WARNING, "bitcoind_paychan.transport.limits"):
        flood, over_handshakes, paid = asyncio.run(scenario())
    assert over_handshakes and paid
    assert flood[:5] == [False] * 5 and flood.count(False) <= 6, flood  # (+1: refill)
    refusals = [r for r in caplog.records if r.name == "bitcoind_paychan.transport.limits"]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]  # no log flood


class TroubleBeforeBroadcast(AsyncBitcoind):
    """The node said it would take the contract; then, before its first broadcast, `trouble`
    happens to the real node (it stops, or the contract's coin is spent elsewhere)."""

    def __init__(self, node: RegtestNode, trouble: Callable[[Transaction], None]) -> None:
        super().__init__(Bitcoind(config_for(node)))
        self.trouble: Callable[[Transaction], None] | None = trouble

    async def broadcast(self, tx: Transaction) -> str:
        if self.trouble is not None:
            trouble, self.trouble = self.trouble, None
            await asyncio.to_thread(trouble, tx)
        return await super().broadcast(tx)


def server_with(sides: Sides, wallet: AsyncBitcoind) -> PaymentServer:
    return PaymentServer(wallet, SQLiteStore(sides.tmp / "server.db"), poll_interval=0.2,
                         review_interval=0.5, autopilot=FAST)


def test_a_node_lost_between_check_and_broadcast_opens_the_channel_and_broadcasts_later(
        sides: Sides) -> None:
    """The contract was checked and stored: the channel opens (nothing is marked FAILED, which
    would be untrue) and the autopilot broadcasts the contract once the node is back."""
    async def scenario() -> tuple[ChannelStatus, int]:
        node = sides.server_node
        server = server_with(sides, TroubleBeforeBroadcast(node, lambda tx: node.stop()))
        host, port = await server.listen()
        channel = await sides.client().open(host, port, 500_000)
        record = server.store.get(Role.SERVER, channel.contract_txid)
        assert record is not None
        await asyncio.to_thread(node.start, same_ports=True)
        await until(lambda: channel.contract_txid in node.rpc("getrawmempool"),
                    what="the autopilot to broadcast the contract")
        await channel.pay(1_000)
        await server.stop()
        return record.status, channel.paid

    status, paid = asyncio.run(scenario())
    assert status is ChannelStatus.OPEN and paid == 2_000


def test_a_contract_double_spent_between_check_and_broadcast_stays_open_then_is_discarded(
        one_node: Sides) -> None:
    sides, node = one_node, one_node.server_node

    def double_spend(tx: Transaction) -> None:
        coin = tx.inputs[0].prevout
        raw = node.rpc("createrawtransaction", [{"txid": coin.txid_hex, "vout": coin.index}],
                       [{node.rpc("getnewaddress", wallet=sides.client_wallet): 4.99}],
                       wallet=sides.client_wallet)
        signed = node.rpc("signrawtransactionwithwallet", raw, wallet=sides.client_wallet)
        node.rpc("sendrawtransaction", signed["hex"])

    async def scenario() -> tuple[str, ChannelStatus]:
        server = server_with(sides, TroubleBeforeBroadcast(node, double_spend))
        host, port = await server.listen()
        with pytest.raises(ChannelFailed) as failed:
            await sides.client().open(host, port, 500_000)
        (record,) = server.store.channels()
        await asyncio.to_thread(node.mine, 1)
        txid = record.contract_txid
        await until(lambda: server.store.get(Role.SERVER, txid).status  # type: ignore[union-attr]
                    is ChannelStatus.FAILED, what="the double spend to fail the channel")
        await asyncio.to_thread(node.mine, FAST.forget_depth)
        await until(lambda: server.store.get(Role.SERVER, txid) is None, what="the discard")
        await server.stop()
        return str(failed.value), record.status

    message, status_at_once = asyncio.run(scenario())
    assert "BAD_TRANSACTION" in message and "refused the contract" in message
    assert status_at_once is ChannelStatus.OPEN  # the node's word at broadcast, not a verdict


def test_the_manager_answers_each_frame_an_application_carries_before_receive_returns(
        mem_sides: MemSides) -> None:
    """A request/response transport hands the manager one frame per request: when `receive`
    returns, the payment is durably stored and its PAYMENT_ACK has gone out through the
    application's link."""
    async def scenario() -> tuple[Dialer, int, str]:
        manager = ServerManager(mem_sides.server_ports(), mem_sides.store("server"),
                                poll_interval=mem_sides.poll_interval,
                                on_payment=lambda p: b"receipt %d" % p.amount)
        await manager.start()
        dial = Dialer(manager)
        client = mem_sides.client(dial=dial)
        channel = await client.open_channel("app://shop", 300_000)
        assert await channel.pay(2_000) == b"receipt 2000"
        await channel.pay(3_000)
        settlement = await channel.close()
        await client.stop()
        await manager.stop()
        return dial, channel.paid, settlement.txid_hex

    dial, paid, settlement = asyncio.run(scenario())
    exchanges = dial.connections[0].exchanges
    payments = [e for e in exchanges if e.request == T.UPDATE_PAYMENT]
    assert [(e.response, e.paid_when_answered) for e in payments] == [
        ([T.PAYMENT_ACK], 1_000 + 2_000), ([T.PAYMENT_ACK], 1_000 + 5_000)]
    assert exchanges[-1].request == T.CLOSE and exchanges[-1].response == [T.CLOSE]
    assert paid == 6_000
    mem_sides.mine(1)
    assert mem_sides.confirmations(settlement) == 1


def test_contract_checks_share_one_cap_and_one_not_checked_in_time_is_refused(
        sides: Sides) -> None:
    """Strangers cost nothing, so the node's checks of offered contracts are capped for all
    peers together: with the one slot held (a check that never ends), a contract is refused
    as retryable once half the handshake timeout has passed, unchecked, and nothing is kept;
    with the slot free again, strangers offering at once are each checked in turn (and
    refused by the node), and a client opens."""
    async def scenario() -> tuple[str, list[str], list[ErrorCode | None], list[str]]:
        server = sides.server(limits=PeerLimits(max_contract_checks=1), handshake_timeout=1.0)
        host, port = await server.listen()
        await server.contract_checks.acquire()  # a stalled check holds the only slot
        with pytest.raises(ChannelFailed) as busy:
            await sides.client().open(host, port, 500_000)
        stored = [r.contract_txid for r in server.store.channels()]
        server.contract_checks.release()
        codes = list(await asyncio.gather(*(fake_open(host, port) for _ in range(3))))
        channel = await sides.client().open(host, port, 500_000)
        await channel.pay(1_000)
        opened = [r.contract_txid for r in server.store.channels()]
        await channel.disconnect()
        await server.stop()
        return str(busy.value), stored, codes, opened

    message, stored, codes, opened = asyncio.run(scenario())
    assert "OTHER" in message and "retry later" in message, message
    assert "busy checking other contracts (at most 1 at once)" in message, message
    assert "nothing was stored" in message, message
    assert stored == []
    assert codes == [ErrorCode.BAD_TRANSACTION] * 3  # checked by the node, one at a time
    assert len(opened) == 1
