"""The server vanishes: after the expiry the client's refund confirms, for every version (on
the in-process chain; test_autopilot.py's refund on its own runs on a real node)."""

from __future__ import annotations

import asyncio

import pytest

from bitcoind_paychan.channel.kinds.v1_multisig import BareMultisig
from bitcoind_paychan.errors import TransactionRejected
from bitcoind_paychan.service.client import Channel, PaymentClient
from tests.service.conftest import MemSides, advance_chain_time
from tests.service.test_flow import wallet_utxo

VALUE = 500_000


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_refund_after_the_server_vanishes(mem_sides: MemSides, version: int) -> None:
    sides = mem_sides
    client = sides.client()

    async def open_then_lose_the_server() -> Channel:
        server = sides.server()
        host, port = await server.listen()
        channel = await client.open(host, port, VALUE, version=version)
        await channel.pay(10_000)
        await server.stop()  # gone, without settling
        return channel

    channel = asyncio.run(open_then_lose_the_server())
    record = channel.record
    sides.mine(1)
    assert sides.confirmations(record.contract_txid)
    with pytest.raises(TransactionRejected, match="not valid yet"):
        asyncio.run(client.refund(record.contract_txid))
    advance_chain_time(sides, record.contract.expiry)
    refund = asyncio.run(PaymentClient(client.ports, client.store).refund(record.contract_txid))
    sides.mine(1)
    assert sides.confirmations(refund.txid_hex) == 1
    assert refund.locktime == record.contract.expiry
    fee = VALUE - refund.outputs[0].value
    # Every version pays the node's estimate; version 1 reuses the server's NONE|ANYONECANPAY
    # signature with a fee of its own choosing instead of the 1000 sat signed at opening.
    assert 0 < fee < BareMultisig.presigned_refund_fee
    assert refund.vsize <= fee <= refund.vsize + 6  # 1 sat/vB, sized with worst-case sigs
    assert wallet_utxo(sides.client_node, refund.txid_hex, 0) == VALUE - fee
