"""What the managers read from a connection an application carries: in order, with the
handshake timeout and the size limit TCP has."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from bitcoind_paychan.channel import messages
from bitcoind_paychan.errors import ErrorCode, RemoteProtocolError
from bitcoind_paychan.transport import CarriedStream, decode
from bitcoind_paychan.wire import MAX_MESSAGE_SIZE, encode_message, pb

T = pb.TwoWayChannelMessage


class Sent:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed = False

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        self.frames += frames

    async def close(self) -> None:
        self.closed = True


def test_a_carried_stream_reads_what_was_fed_in_order_then_the_end() -> None:
    async def scenario() -> tuple[list[int | None], list[bytes], bool]:
        link = Sent()
        stream = CarriedStream(link, "app")
        stream.feed(encode_message(messages.channel_open()))
        stream.feed(messages.payment_ack(b"x"))  # a decoded message is taken as it is
        stream.end()
        read = [stream.receive_buffered(), await stream.receive(1), await stream.receive(1)]
        await stream.send(messages.close())
        await stream.close()
        return [m.type if m else None for m in read], link.frames, link.closed

    read, sent, closed = asyncio.run(scenario())
    assert read == [T.CHANNEL_OPEN, T.PAYMENT_ACK, None]
    assert [T.FromString(f).type for f in sent] == [T.CLOSE] and closed


def test_silence_is_a_timeout_and_an_oversized_or_junk_frame_a_syntax_error() -> None:
    async def silent() -> None:
        await CarriedStream(Sent(), "app").receive(0.05)

    with pytest.raises(RemoteProtocolError) as timeout:
        asyncio.run(silent())
    assert timeout.value.code is ErrorCode.TIMEOUT
    for frame in (bytes(MAX_MESSAGE_SIZE + 1), b"\xff\x00junk"):
        with pytest.raises(RemoteProtocolError) as bad:
            decode(frame)
        assert bad.value.code is ErrorCode.SYNTAX_ERROR
