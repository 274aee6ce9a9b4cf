"""Open → pay → close → settle, for every version: on real regtest nodes (funding, signing,
broadcast, a wallet input paying the fee, a Knots node refusing version 1), and on the
in-process chain where the services decide (exhausting, falling back, a fixed payout,
pipelining)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction
from bitcoind_paychan.channel.fees import FeePolicy
from bitcoind_paychan.channel.records import ChannelStatus, Role
from bitcoind_paychan.node import to_sat
from bitcoind_paychan.service.client import Channel
from regtest.memnode import MemNode
from regtest.node import RegtestNode
from tests.service.conftest import FAST, MemSides, Sides

VALUE = 1_000_000


def wallet_utxo(node: RegtestNode | MemNode, txid: str, vout: int) -> int | None:
    """The value of txid:vout if the node's wallet counts it as its own (and unspent)."""
    if isinstance(node, MemNode):
        out = node.wallet.coins().get(OutPoint.from_hex(txid, vout))
        return None if out is None else out.value
    for coin in node.wallet_rpc("listunspent", 0):
        if coin["txid"] == txid and coin["vout"] == vout:
            return to_sat(coin["amount"])
    return None


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_open_pay_close_settles_on_chain(sides: Sides, version: int) -> None:
    async def scenario() -> tuple[Channel, Transaction]:
        server = sides.server()
        host, port = await server.listen()
        channel = await sides.client().open(host, port, VALUE, version=version)
        assert channel.version == version
        for i in range(40):
            assert await channel.pay(2_000, f"item {i}".encode()) == b""
        settlement = await channel.close()
        await server.stop()
        return channel, settlement

    channel, settlement = asyncio.run(scenario())
    paid = 1_000 + 40 * 2_000
    assert channel.paid == paid
    assert [p.amount for p in sides.payments()] == [1_000] + [2_000] * 40
    assert sides.payments()[5].info == b"item 4"
    sides.mine(1)
    status = sides.client_node.rpc("getrawtransaction", settlement.txid_hex, True)
    assert status["confirmations"] == 1
    change, share = settlement.outputs[0].value, settlement.outputs[1].value
    fee = VALUE - change - share
    assert change == VALUE - paid
    assert 0 < fee < 2_000
    assert wallet_utxo(sides.server_node, settlement.txid_hex, 1) == share
    assert wallet_utxo(sides.client_node, settlement.txid_hex, 0) == change
    server_record = sides.server().store.get(Role.SERVER, channel.contract_txid)
    assert server_record is not None and server_record.status is ChannelStatus.CLOSING
    assert server_record.settlement_tx == settlement.serialize()
    client_record = sides.client().store.get(Role.CLIENT, channel.contract_txid)
    assert client_record is not None and client_record.status is ChannelStatus.CLOSING


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_exhausting_a_channel_settles_everything_to_the_server(mem_sides: MemSides,
                                                               version: int) -> None:
    async def scenario() -> tuple[Channel, Transaction]:
        server = mem_sides.server()
        host, port = await server.listen()
        channel = await mem_sides.client().open(host, port, 200_000, version=version)
        while channel.remaining > 50_000:
            await channel.pay(50_000)
        await channel.pay(channel.remaining)
        settlement = await channel.close()
        await server.stop()
        return channel, settlement

    channel, settlement = asyncio.run(scenario())
    assert channel.remaining == 0
    assert len(settlement.outputs) == 1
    mem_sides.mine(1)
    assert wallet_utxo(mem_sides.server_node, settlement.txid_hex, 0) == settlement.outputs[0].value
    assert settlement.outputs[0].value > 200_000 - 2_000


@pytest.mark.parametrize(("spoken", "ends_on"), [((1, 2), 2), ((1, 2, 3), 3)])
def test_client_falls_back_from_version_4(mem_sides: MemSides, spoken: tuple[int, ...],
                                          ends_on: int) -> None:
    from bitcoind_paychan.channel.server import ServerPolicy

    async def scenario() -> int:
        server = mem_sides.server(ServerPolicy(versions=spoken))
        host, port = await server.listen()
        channel = await mem_sides.client().open(host, port, VALUE)
        await channel.pay(5_000)
        await channel.close()
        await server.stop()
        return channel.version

    assert asyncio.run(scenario()) == ends_on


@pytest.mark.parametrize("version", [2, 3, 4])
def test_fee_above_the_servers_share_comes_from_a_wallet_input(sides: Sides,
                                                              version: int) -> None:
    async def scenario() -> Transaction:
        fees = FeePolicy(min_rate=20)  # 20 sat/vB: more than the 1000 sat initial payment
        server = sides.server(autopilot=replace(FAST, fees=fees))
        host, port = await server.listen()
        channel = await sides.client().open(host, port, VALUE, version=version)
        sides.mine(1)  # else the wallet also lifts the unconfirmed contract to this rate
        settlement = await channel.close()  # only the initial payment was made
        await server.stop()
        return settlement

    settlement = asyncio.run(scenario())
    assert len(settlement.inputs) >= 2  # the contract and a wallet coin
    assert settlement.outputs[0].value == VALUE - 1_000  # the client's change, untouched
    assert settlement.outputs[1].value == 1_000  # the server's share, untouched
    sides.mine(1)
    info = sides.server_node.rpc("getrawtransaction", settlement.txid_hex, True)
    assert info["confirmations"] == 1
    spent = sum(
        to_sat(sides.server_node.rpc("getrawtransaction", i.prevout.txid_hex, True)
               ["vout"][i.prevout.index]["value"]) for i in settlement.inputs)
    fee = spent - sum(o.value for o in settlement.outputs)
    assert 20 * settlement.vsize <= fee <= 21 * settlement.vsize  # the rate asked
    assert wallet_utxo(sides.client_node, settlement.txid_hex, 0) == VALUE - 1_000


def test_v1_through_a_knots_node_fails_with_what_to_do(sides: Sides) -> None:
    from bitcoind_paychan.errors import ChannelFailed
    from bitcoind_paychan.node import AsyncBitcoind, Bitcoind
    from bitcoind_paychan.service.server import PaymentServer
    from bitcoind_paychan.store import SQLiteStore
    from tests.conftest import config_for

    async def scenario() -> str:
        plain = AsyncBitcoind(Bitcoind(config_for(sides.server_node)))  # no regtest mining
        server = PaymentServer(plain, SQLiteStore(sides.tmp / "plain.db"))
        host, port = await server.listen()
        try:
            await sides.client().open(host, port, VALUE, version=1)
        except ChannelFailed as exc:
            return str(exc)
        finally:
            await server.stop()
        raise AssertionError("a bare multisig contract went through Knots")

    message = asyncio.run(scenario())
    assert "BAD_TRANSACTION" in message
    assert "bare multisig" in message and "Bitcoin Core" in message and "version 2 or 3" in message


def test_a_fixed_payout_address_receives_the_settlement(mem_sides: MemSides) -> None:
    script = mem_sides.server_node.wallet.new_script()

    async def scenario() -> Transaction:
        server = mem_sides.server(payout_script=script)
        host, port = await server.listen()
        channel = await mem_sides.client().open(host, port, VALUE)
        await channel.pay(10_000)
        settlement = await channel.close()
        await server.stop()
        return settlement

    settlement = asyncio.run(scenario())
    assert settlement.outputs[1].script_pubkey == script


def test_pipelined_payments_on_one_channel_are_each_stored_and_acknowledged(
        mem_sides: MemSides) -> None:
    async def scenario() -> Channel:
        server = mem_sides.server()
        host, port = await server.listen()
        channel = await mem_sides.client().open(host, port, VALUE)
        assert channel.machine.window == 16  # our server takes a window: the policy's
        infos = await asyncio.gather(*(channel.pay(1_000, f"p{i}".encode()) for i in range(60)))
        assert infos == [b""] * 60
        await channel.close()
        await server.stop()
        return channel

    channel = asyncio.run(scenario())
    assert channel.paid == 1_000 + 60 * 1_000
    assert [p.info for p in mem_sides.payments()[1:]] == [f"p{i}".encode() for i in range(60)]
    for role, name in ((Role.SERVER, "server"), (Role.CLIENT, "client")):
        log = mem_sides.store(name).payments(role, channel.contract_txid)
        assert [e.seq for e in log] == list(range(61, 0, -1))  # every one stored, in order
