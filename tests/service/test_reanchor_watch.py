"""A re-anchored channel after R is signed (issue 23, docs/design/reanchoring.md 4, 5, 7) on
real regtest nodes: the channel keeps its id across generations, the server's watcher
promotes it once R confirms and tells a live connection (REANCHOR_LOCKED), a client that
missed it is told on its resume, and the channel is settled on its new contract."""

from __future__ import annotations

import asyncio

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.service.client import Channel, PaymentClient
from bitcoind_paychan.service.server import PaymentServer
from bitcoind_paychan.store import ChannelStore
from regtest.waiting import until
from tests.service.conftest import Sides

VALUE, DAY = 1_000_000, 24 * 3600


def generation(store: ChannelStore, role: Role, channel_id: str) -> int:
    record = store.get(role, channel_id)
    return record.generation if record is not None else -1


async def reanchored_channel(sides: Sides, top_up: int = 0
                             ) -> tuple[PaymentServer, PaymentClient, Channel, ChannelRecord]:
    """A v3 channel paid 1,000 + 10,000 sat and re-anchored (renewed to two days, the
    server's payout of what it acknowledged, `top_up`): R complete, broadcast, unconfirmed."""
    server = sides.server(ServerPolicy(reanchoring=True))
    host, port = await server.listen()
    client = sides.client(policy=ClientPolicy(VALUE, reanchoring=True))
    channel = await client.open(host, port, VALUE, version=3)
    await channel.pay(10_000)
    signed = await channel.reanchor(top_up, 2 * DAY)
    return server, client, channel, signed


def test_promotion_on_a_live_connection_and_settlement_of_the_new_contract(
        sides: Sides) -> None:
    """R confirms: the server's watcher promotes the stored channel (generation 1, the old
    one kept in `generations`) and tells the live connection; the client, still signing on
    both contracts, moves on REANCHOR_LOCKED; payments then go on the new contract alone, and
    the channel's settlement spends it."""
    async def scenario() -> tuple[ChannelRecord, ChannelRecord, ChannelRecord, Transaction,
                                  list[int]]:
        server, client, channel, signed = await reanchored_channel(sides)
        channel_id = signed.channel_id
        await channel.pay(2_000)  # on both contracts
        sides.mine(1)
        await until(lambda: generation(server.store, Role.SERVER, channel_id) == 1,
                    what="the server's promotion")
        await channel.pay(3_000)  # signed on both, crossing REANCHOR_LOCKED
        assert channel.record.generation == 1 and channel.record.pending is None
        await channel.pay(4_000)  # on the new contract alone
        client_record = channel.record
        server_record = server.store.get(Role.SERVER, channel_id)
        assert server_record is not None
        stored_client = client.store.get(Role.CLIENT, channel_id)
        assert stored_client is not None
        generations = [g.generation for g in server.store.generations(Role.SERVER, channel_id)]
        settlement = await channel.close()
        await client.stop()
        await server.stop()
        return client_record, stored_client, server_record, settlement, generations

    client_record, stored_client, server_record, settlement, generations = asyncio.run(
        scenario())
    assert generations == [0]
    assert server_record.generation == stored_client.generation == 1
    assert server_record.contract_txid == client_record.contract_txid != server_record.channel_id
    assert server_record.change == stored_client.change == client_record.change
    server_record.contract.check_payment(server_record.change, server_record.signature)
    assert settlement.inputs[0].prevout == server_record.contract.outpoint  # C' is settled
    sides.mine(1)
    assert sides.server_node.rpc("getrawtransaction", settlement.txid_hex, True)[
        "confirmations"] == 1


def test_a_client_that_missed_the_promotion_is_told_on_its_resume(sides: Sides) -> None:
    """The client hangs up while R is unconfirmed; the server promotes with no connection
    (under the channel's lease). The client resumes naming the channel's id with its record
    of the old generation: the server opens it, takes its payment re-sent on both contracts
    by its signature on the new one, and says REANCHOR_LOCKED; the client moves and pays on."""
    async def scenario() -> tuple[ChannelRecord, ChannelRecord]:
        server, client, channel, signed = await reanchored_channel(sides)
        channel_id = signed.channel_id
        await channel.pay(2_000)
        await channel.disconnect()
        sides.mine(1)
        await until(lambda: generation(server.store, Role.SERVER, channel_id) == 1,
                    what="the server's promotion")
        assert generation(client.store, Role.CLIENT, channel_id) == 0  # FAST: 2 blocks
        resumed = await client.resume(channel_id)
        await resumed.pay(5_000)
        client_record = resumed.record
        server_record = server.store.get(Role.SERVER, channel_id)
        assert server_record is not None
        await client.stop()
        await server.stop()
        return client_record, server_record

    client_record, server_record = asyncio.run(scenario())
    assert client_record.generation == server_record.generation == 1
    assert client_record.change == server_record.change
    assert server_record.paid == client_record.paid
    assert server_record.status is ChannelStatus.OPEN
    server_record.contract.check_payment(server_record.change, server_record.signature)
