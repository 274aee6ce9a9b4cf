"""A stranger with no money: opens channels whose contracts spend coins that do not exist.

The contract is well formed (output 0 is the channel script, one native segwit input) and the
initial payment is validly signed with the stranger's own key, so only the node can tell it is
worthless. For tests and `bench/spam.py`, against a server on loopback.
"""

from __future__ import annotations

import os

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.contract import Contract, output_script
from bitcoind_paychan.errors import ErrorCode
from bitcoind_paychan.wire import error_code, open_connection, pb

T = pb.TwoWayChannelMessage


def fake_contract(version: int, key: PrivateKey, initiate: pb.Initiate) -> Transaction:
    """A contract paying the channel script from a made-up segwit coin."""
    script = output_script(version, key.pub.data, initiate.multisig_key,
                           initiate.expire_time_secs)
    coin = TxIn(OutPoint(os.urandom(32), 0), b"", 0xFFFFFFFD, (bytes(71), bytes(33)))
    return Transaction(2, (coin,), (TxOut(initiate.min_accepted_channel_size, script),), 0)


async def fake_open(host: str, port: int, version: int = 3,
                    timeout: float = 30.0) -> ErrorCode | None:
    """Try to open a channel with a fake contract (version 2 or 3). Returns the ERROR code
    the server answered, or None if it opened the channel (CHANNEL_OPEN)."""
    stream = await open_connection(host, port, timeout)
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
        tx = fake_contract(version, key, initiate)
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
