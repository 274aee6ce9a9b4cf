"""The server answers bad input with the right ERROR, loses nothing, and keeps serving."""

from __future__ import annotations

import asyncio
import struct

import pytest

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.records import Role
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.errors import ErrorCode
from bitcoind_paychan.service.client import Channel
from bitcoind_paychan.wire import error_code, open_connection, pb
from tests.service.conftest import Sides

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


def test_bad_input_gets_the_right_error_while_a_good_channel_keeps_paying(sides: Sides) -> None:
    async def scenario() -> tuple[dict[str, tuple[ErrorCode, bool]], Channel]:
        server = sides.server()
        server.handshake_timeout = 0.5
        host, port = await server.listen()
        good = await sides.client().open(host, port, 500_000)
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


@pytest.mark.parametrize("version", [1, 2, 3])
def test_bad_payments_are_refused_and_nothing_is_lost(sides: Sides, version: int) -> None:
    async def scenario() -> tuple[list[ErrorCode], int, int]:
        server = sides.server(ServerPolicy(min_increment=100))
        host, port = await server.listen()
        client = sides.client()
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

