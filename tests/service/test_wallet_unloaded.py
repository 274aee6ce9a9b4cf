"""A server whose bitcoind restarted without its wallet: it loads the wallet itself and
settles; when it cannot, the client's close says the server's reason at once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bitcoind_paychan.errors import ChannelFailed
from bitcoind_paychan.service.client import Channel, PaymentClient
from regtest.node import RegtestNode
from tests.service.conftest import Sides, run

VALUE = 400_000


def wallet_dir(node: RegtestNode) -> Path:
    assert node.wallet is not None
    return node.datadir / node.chain / "wallets" / node.wallet


def with_a_paid_channel(sides: Sides,
                        then: Callable[[PaymentClient, Channel], Awaitable[None]]) -> None:
    """Open a channel between a server and a client, pay once, then run `then`."""
    async def scenario() -> None:
        server = sides.server()
        host, port = await server.listen()
        client = sides.client()
        try:
            channel = await client.open(host, port, VALUE)
            await channel.pay(5_000)
            await then(client, channel)
        finally:
            await client.stop()
            await server.stop()

    run(scenario())


def test_close_settles_after_the_servers_wallet_was_unloaded(
        sides: Sides, caplog: pytest.LogCaptureFixture) -> None:
    async def close(client: PaymentClient, channel: Channel) -> None:
        sides.server_node.rpc("unloadwallet", sides.server_node.wallet)
        assert (await channel.close()).outputs  # the server loaded its wallet and settled

    with_a_paid_channel(sides, close)
    assert any("had wallet 'paychan' on disk but not loaded" in r.getMessage() and
               "loaded it" in r.getMessage() for r in caplog.records)


def test_close_says_at_once_why_the_server_cannot_settle(sides: Sides) -> None:
    node = sides.server_node

    async def close(client: PaymentClient, channel: Channel) -> None:
        node.rpc("unloadwallet", node.wallet)
        moved = wallet_dir(node).rename(wallet_dir(node).with_name("elsewhere"))
        # Were the server's ERROR ignored, the close would wait out its 60 s and then say
        # "did not settle in time": the message shows it did not.
        with pytest.raises(ChannelFailed) as failed:
            await channel.close()
        message = str(failed.value)
        assert "the server said: cannot settle now" in message and "(OTHER)" in message
        assert "wallet 'paychan' is not loaded" in message and "stays open" in message
        moved.rename(wallet_dir(node))
        again = await client.resume(channel.contract_txid)
        assert (await again.close()).outputs  # now it loads the wallet and settles

    with_a_paid_channel(sides, close)
