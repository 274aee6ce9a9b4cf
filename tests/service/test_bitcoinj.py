"""Our client against a server that behaves as bitcoinj 0.15's does (tests/service/
bitcoinj_peer.py), on real regtest nodes: version fallback when its ERROR frame is lost, small
increments, and a close it never answers."""

from __future__ import annotations

import asyncio

from bitcoind_paychan.channel.effects import PeerError
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.errors import ChannelFailed, ErrorCode
from tests.service.bitcoinj_peer import BITCOINJ_POLICY, BitcoinjServer
from tests.service.conftest import Sides
from tests.service.test_flow import wallet_utxo

VALUE = 500_000
DEADLINE = 300.0  # against a hang, not a speed figure


def refusals(sides: Sides) -> list[PeerError]:
    return [e for e in sides.errors() if e.code is ErrorCode.NO_ACCEPTABLE_VERSION]


def test_open_with_defaults_falls_back_when_the_version_error_is_lost(sides: Sides) -> None:
    """Seen: bitcoinj hangs up on our major 3 (now 4, then 3) without its ERROR frame, and
    `open()` failed with "the channel stays stored" though nothing was stored."""
    async def scenario() -> tuple[list[int], int | None]:
        server = sides.server(BITCOINJ_POLICY, kind=BitcoinjServer)
        host, port = await server.listen()
        client = sides.client()
        first = await client.open(host, port, VALUE)
        second = await client.open(host, port, VALUE, new=True)  # remembered: no retry
        for channel in (first, second):
            await channel.pay(2_000)
            await channel.disconnect()
        await client.stop()
        client.store.close()
        client = sides.client()  # a restart
        again = await client.open(host, port, VALUE, new=True)
        await again.disconnect()
        await client.stop()
        await server.stop()
        return [first.version, second.version, again.version], client.spoken_version(
            f"{host}:{port}")

    versions, spoken = asyncio.run(scenario())
    assert versions == [2, 2, 2] and spoken == 2
    # The server refused 4, then 3, once each (and said nothing); remembered after that.
    assert [e.explanation.split()[2] for e in refusals(sides)] == ["4", "3"]


def test_a_hang_up_on_the_oldest_major_says_nothing_was_stored(sides: Sides) -> None:
    async def scenario() -> str:
        server = sides.server(ServerPolicy(versions=(1,)), kind=BitcoinjServer)
        host, port = await server.listen()
        client = sides.client()
        try:
            await client.open(host, port, VALUE, version=2)
        except ChannelFailed as exc:
            message = str(exc)
        else:
            raise AssertionError("opened a channel with a server that hung up")
        assert client.channels() == []
        await client.stop()
        await server.stop()
        return message

    message = asyncio.run(scenario())
    assert "hung up without answering" in message and "nothing was stored" in message
    assert "stays stored" not in message


def test_increments_below_min_payment_are_acknowledged(sides: Sides) -> None:
    """bitcoinj clients pay in steps as small as 100 sat; min_payment bounds the first."""
    async def scenario() -> int:
        server = sides.server(BITCOINJ_POLICY, kind=BitcoinjServer)
        host, port = await server.listen()
        channel = await sides.client().open(host, port, VALUE, version=2)
        for _ in range(10):
            await channel.pay(100)
        await channel.disconnect()
        await server.stop()
        return channel.paid

    assert asyncio.run(scenario()) == 1_000 + 10 * 100
    assert [p.amount for p in sides.payments()] == [1_000] + [100] * 10
    assert not sides.errors()


def test_close_finishes_when_the_settlement_appears_though_close_never_comes(
        sides: Sides) -> None:
    """The server broadcasts the settlement but never answers CLOSE and stays connected: the
    client watches its node and finishes with the settlement (no CLOSE timeout)."""
    async def scenario() -> tuple[str, int, bool]:
        server = sides.server(BITCOINJ_POLICY, kind=BitcoinjServer)
        host, port = await server.listen()
        client = sides.client()
        channel = await client.open(host, port, VALUE)
        await channel.pay(20_000)
        settlement = await asyncio.wait_for(channel.close(timeout=3600), DEADLINE)
        assert isinstance(server, BitcoinjServer)
        silent = len(server.silent) == 1  # it really never answered nor hung up
        again = await channel.close()  # idempotent: the same settlement
        assert again.txid_hex == settlement.txid_hex
        await client.stop()
        await server.stop()
        return settlement.txid_hex, channel.paid, silent

    txid, paid, silent = asyncio.run(scenario())
    assert silent
    sides.mine(1)
    assert wallet_utxo(sides.client_node, txid, 0) == VALUE - paid


def test_resume_pay_and_close_with_a_bitcoinj_server(sides: Sides) -> None:
    async def scenario() -> tuple[str, str]:
        server = sides.server(BITCOINJ_POLICY, kind=BitcoinjServer)
        host, port = await server.listen()
        client = sides.client()
        first = await client.open(host, port, VALUE)
        await first.pay(3_000)
        await first.disconnect()
        resumed = await client.open(host, port, VALUE)
        assert resumed.resumed
        await resumed.pay(4_000)
        await asyncio.wait_for(resumed.close(timeout=3600), DEADLINE)
        await client.stop()
        await server.stop()
        return first.contract_txid, resumed.contract_txid

    first, resumed = asyncio.run(scenario())
    assert first == resumed
    assert sum(p.amount for p in sides.payments()) == 1_000 + 3_000 + 4_000
