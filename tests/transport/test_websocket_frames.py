"""WebSocket edges at the frame level: the protocol's largest message is accepted as on TCP
(one byte more is refused with 1009), and an unmasked client frame is refused with 1002
(RFC 6455 §5.1), however the frame headers fall across reads."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from bitcoind_paychan.errors import RemoteProtocolError
from bitcoind_paychan.transport import websocket
from bitcoind_paychan.transport.base import Stream
from bitcoind_paychan.transport.limits import Admission, PeerGate
from bitcoind_paychan.transport.wsmask import MaskCheck
from bitcoind_paychan.wire import MAX_MESSAGE_SIZE, pb

T = pb.TwoWayChannelMessage
Received = list[pb.TwoWayChannelMessage | RemoteProtocolError | None]


def message_of(size: int) -> bytes:
    """An UPDATE_PAYMENT of exactly `size` bytes once serialized (its info padded)."""
    message = T(type=T.UPDATE_PAYMENT)
    message.update_payment.client_change_value = 1
    message.update_payment.signature = b"s"
    message.update_payment.info = b""
    padding = size - len(message.SerializeToString())
    while len(message.SerializeToString()) != size:  # the length prefix grows with the info
        message.update_payment.info = b"x" * padding
        padding -= len(message.SerializeToString()) - size
    return message.SerializeToString()


async def listening(received: Received) -> tuple[websocket.Listener, str]:
    """A listener whose connections record the first message they receive (or why not)."""
    async def serve(stream: Stream, admission: Admission) -> None:
        try:
            received.append(await stream.receive(10))
        except RemoteProtocolError as exc:
            received.append(exc)

    listener = websocket.Listener(PeerGate(), serve, "/")
    host, port = await listener.listen("127.0.0.1", 0)
    return listener, f"{host}:{port}"


def with_listener(scenario: Callable[[str, Received], Awaitable[None]]) -> Received:
    received: Received = []

    async def main() -> None:
        listener, address = await listening(received)
        try:
            await scenario(address, received)
        finally:
            listener.close()
            await listener.stop()

    asyncio.run(main())
    return received


@pytest.mark.parametrize(("size", "accepted"), [(MAX_MESSAGE_SIZE, True),
                                                (MAX_MESSAGE_SIZE + 1, False)])
def test_the_largest_message_is_accepted_one_byte_more_is_refused(size: int,
                                                                  accepted: bool) -> None:
    data = message_of(size)
    assert len(data) == size
    close_code: list[int | None] = []

    async def scenario(address: str, received: Received) -> None:
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(f"ws://{address}/") as ws:
            await ws.send_bytes(data)
            async for _ in ws:
                pass
            close_code.append(ws.close_code)

    received = with_listener(scenario)
    if accepted:
        assert [m.SerializeToString() for m in received if isinstance(m, T)] == [data]
    else:
        assert close_code == [aiohttp.WSCloseCode.MESSAGE_TOO_BIG]
        assert not any(isinstance(m, T) for m in received)


def frame(payload: bytes, *, masked: bool) -> bytes:
    """One final binary frame; masked with a random key, as a client must."""
    size = len(payload)
    length = (bytes([size | (0x80 if masked else 0)]) if size < 126 else
              bytes([126 | (0x80 if masked else 0)]) + struct.pack(">H", size) if size < 65536
              else bytes([127 | (0x80 if masked else 0)]) + struct.pack(">Q", size))
    if not masked:
        return b"\x82" + length + payload
    key = os.urandom(4)
    return b"\x82" + length + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def raw_exchange(address: str, data: bytes, *, with_upgrade: bool = False) -> bytes:
    """Upgrade by hand and send `data` as it is (in the upgrade's own write, or after the
    101); what the server sent after its 101, until it hung up."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET / HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode() + (data if with_upgrade else b""))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    if not with_upgrade:
        writer.write(data)
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return answer


def close_code_of(answer: bytes) -> int:
    """The status code of the close frame the server sent (server frames are unmasked)."""
    opcode, length = answer[0] & 0x0F, answer[1]
    assert opcode == 0x8 and length >= 2, answer[:16]
    return int(struct.unpack(">H", answer[2:4])[0])


@pytest.mark.parametrize("with_upgrade", [False, True])
def test_an_unmasked_client_frame_is_refused_with_a_protocol_error(with_upgrade: bool) -> None:
    hello = message_of(40)
    answers: list[bytes] = []

    async def scenario(address: str, received: Received) -> None:
        answers.append(await raw_exchange(address, frame(hello, masked=False),
                                          with_upgrade=with_upgrade))

    received = with_listener(scenario)
    assert close_code_of(answers[0]) == aiohttp.WSCloseCode.PROTOCOL_ERROR
    assert not any(isinstance(m, T) for m in received)


@pytest.mark.parametrize("with_upgrade", [False, True])
def test_masked_frames_sent_by_hand_are_read(with_upgrade: bool) -> None:
    hello = message_of(300)  # a 16-bit extended length

    async def scenario(address: str, received: Received) -> None:
        await raw_exchange(address, frame(hello, masked=True), with_upgrade=with_upgrade)

    received = with_listener(scenario)
    assert [m.SerializeToString() for m in received if isinstance(m, T)] == [hello]


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536])
def test_mask_check_follows_headers_across_any_split(size: int) -> None:
    stream = frame(bytes(size), masked=True) + frame(b"ab", masked=True)
    for chunk in (1, 3, 7, len(stream)):
        check = MaskCheck()
        assert all(check.feed(stream[i:i + chunk]) for i in range(0, len(stream), chunk))
        tail = frame(b"x", masked=False)
        assert not all(check.feed(tail[i:i + chunk]) for i in range(0, len(tail), chunk))
