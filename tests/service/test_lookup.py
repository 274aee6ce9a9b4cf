"""`ClientManager.lookup`: the one registry of live client channels (the manager's `live`),
used by `open_channel`, the daemon and the paid-HTTP example: live, else resumed, else new."""

from __future__ import annotations

import asyncio

import pytest

from bitcoind_paychan.errors import ChannelExists
from bitcoind_paychan.service.client import Source
from tests.service.conftest import Sides


def test_a_lookup_finds_the_live_channel_else_resumes_the_stored_one_else_opens_one(
        sides: Sides) -> None:
    async def scenario() -> None:
        server = sides.server()
        host, port = await server.listen()
        peer = f"{host}:{port}"
        client = sides.client()
        # Two at once: one opens, the other waits for its turn and finds that channel.
        both = await asyncio.gather(client.lookup(peer, 200_000, any_value=True),
                                    client.lookup(peer, 200_000, any_value=True))
        assert sorted(f.source.value for f in both) == ["live", "new"]
        channel = both[0].channel
        assert both[1].channel is channel and len(client.channels()) == 1
        other_value = await client.lookup(peer, 300_000, any_value=True)
        assert (other_value.source, other_value.channel) == (Source.LIVE, channel)
        with pytest.raises(ChannelExists, match=channel.contract_txid):
            await client.lookup(peer, 300_000)  # only one of that value serves
        assert [r.contract_txid for r in client.payable(peer)] == [channel.contract_txid]
        assert client.has_payable(peer) and not client.has_payable("127.0.0.1:1")
        await channel.disconnect()
        assert client.has_payable(peer)  # stored: resumable
        resumed = await client.lookup(peer, 200_000)
        assert resumed.source is Source.RESUMED and resumed.channel is not channel
        assert resumed.channel.contract_txid == channel.contract_txid
        assert client.connected == 1
        await client.stop()  # a restart: only the store remembers the channel
        client.store.close()
        client = sides.client()
        again = await client.lookup(peer, any_value=True)
        assert (again.source, again.channel.contract_txid) == (Source.RESUMED,
                                                               channel.contract_txid)
        fresh = await client.lookup(peer, 200_000, new=True)
        assert fresh.source is Source.NEW
        assert fresh.channel.contract_txid != channel.contract_txid
        assert len(client.payable(peer)) == 2
        await client.stop()
        await server.stop()

    asyncio.run(scenario())
