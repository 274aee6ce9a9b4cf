"""A stranger with no money: opens channels whose contracts spend coins that do not exist.

The contract is well formed (output 0 is the channel script, one native segwit input) and the
initial payment is validly signed with the stranger's own key, so only the node can tell it is
worthless. For tests and `bench/spam.py`, against a server on loopback.
"""

from __future__ import annotations

import asyncio
import os

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.contract import Contract, output_script
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import ErrorCode
from bitcoind_paychan.transport.stream import MessageStream
from bitcoind_paychan.wire import error_code, pb

T = pb.TwoWayChannelMessage


def fake_contract(version: int, client: PrivateKey, server_pub: bytes, expiry: int,
                  value: int) -> Transaction:
    """A contract paying the channel script from a made-up segwit coin."""
    script = output_script(version, client.pub.data, server_pub, expiry)
    coin = TxIn(OutPoint(os.urandom(32), 0), b"", 0xFFFFFFFD, (bytes(71), bytes(33)))
    return Transaction(2, (coin,), (TxOut(value, script),), 0)


def failed_row(expiry: int, value: int = 100_000, version: int = 3) -> ChannelRecord:
    """What an older server stored for each stranger's attempt: a FAILED channel whose
    contract spends a coin that never existed, with a valid initial payment."""
    client, server = PrivateKey.generate(), PrivateKey.generate()
    tx = fake_contract(version, client, server.pub.data, expiry, value)
    contract = Contract(version, client.pub.data, server.pub.data, expiry,
                        OutPoint(tx.txid, 0), value)
    change = value - 1_000
    return ChannelRecord(Role.SERVER, contract, tx.serialize(), server, change,
                         contract.sign_payment(client, change), ChannelStatus.FAILED,
                         payments=1)


async def fake_open(host: str, port: int, version: int = 3, timeout: float = 30.0,
                    source: str | None = None) -> ErrorCode | None:
    """Try to open a channel with a fake contract (version 2 or 3), from `source` (a local
    address) if given. Returns the ERROR code the server answered (OTHER if it hung up), or
    None if it opened the channel (CHANNEL_OPEN)."""
    local = (source, 0) if source else None
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    stream = MessageStream(reader, writer)
    try:
        await stream.send(messages.client_version(version, messages.DEFAULT_TIME_WINDOW, None))
        initiate = None
        while initiate is None:
            reply = await stream.receive(timeout)
            if reply is None or reply.type == T.ERROR:
                return error_code(reply.error) if reply else ErrorCode.OTHER
            if reply.type == T.INITIATE:
                initiate = reply.initiate
        key = PrivateKey.generate()
        tx = fake_contract(version, key, initiate.multisig_key, initiate.expire_time_secs,
                           initiate.min_accepted_channel_size)
        contract = Contract(version, key.pub.data, initiate.multisig_key,
                            initiate.expire_time_secs, OutPoint(tx.txid, 0), tx.outputs[0].value)
        change = contract.value - initiate.min_payment
        await stream.send(messages.provide_contract(
            tx.serialize(), change, contract.sign_payment(key, change), key.pub.data))
        reply = await stream.receive(timeout)
        if reply is None:
            return ErrorCode.OTHER
        return None if reply.type == T.CHANNEL_OPEN else error_code(reply.error)
    finally:
        await stream.close()
