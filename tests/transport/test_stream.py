"""MessageStream over real loopback TCP."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, cast

import pytest

from bitcoind_paychan.errors import ErrorCode, RemoteProtocolError
from bitcoind_paychan.transport.stream import (
    PAUSE_AT,
    FrameProtocol,
    MessageStream,
    framed_connection,
    open_connection,
    start_server,
)
from bitcoind_paychan.wire import MessageType, encode_frame, encode_message, pb
from regtest.waiting import until

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


def ack(info: bytes = b"") -> pb.TwoWayChannelMessage:
    return pb.TwoWayChannelMessage(
        type=MessageType.PAYMENT_ACK, payment_ack=pb.PaymentAck(info=info)
    )


def sending(msgs: list[pb.TwoWayChannelMessage]) -> Handler:
    """A raw server's handler: `msgs` in one write, then the connection held until the
    client leaves."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"".join(encode_frame(encode_message(m)) for m in msgs))  # one segment
        await writer.drain()
        await reader.read()
        writer.close()

    return handler


@pytest.fixture(params=["reader", "protocol"])
def fed(request: pytest.FixtureRequest) -> bool:
    """Our stream over a StreamReader, or fed by its FrameProtocol (as a TCP listener's)."""
    return bool(request.param == "protocol")


async def framed(host: str, port: int) -> MessageStream:
    """A MessageStream fed by a FrameProtocol in data_received."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(lambda: FrameProtocol(loop), host, port)
    return framed_connection(transport, protocol, loop)


@contextlib.asynccontextmanager
async def client_of(handler: Handler, fed: bool = False) -> AsyncIterator[MessageStream]:
    """Start a raw server running `handler`; yield our MessageStream connected to it (`fed`:
    by a FrameProtocol)."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stream = await (framed("127.0.0.1", port) if fed else
                    open_connection("127.0.0.1", port, timeout=5))
    try:
        yield stream
    finally:
        await stream.close()
        server.close()
        await server.wait_closed()


def test_several_frames_in_one_write(fed: bool) -> None:
    msgs = [ack(bytes([i])) for i in range(5)]

    async def main() -> None:
        async with client_of(sending(msgs), fed) as stream:
            got = [await stream.receive(timeout=5) for _ in msgs]
            assert got == msgs

    run(main())


def test_oversized_frame_from_peer(fed: bool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode_frame(encode_message(ack())) + struct.pack(">i", 32768))
        await writer.drain()
        await reader.read()  # never sends the body: the client must not wait for it
        writer.close()

    async def main() -> None:
        async with client_of(handler, fed) as stream:
            assert await stream.receive(timeout=5) == ack()
            with pytest.raises(RemoteProtocolError, match="32768") as info:
                await stream.receive(timeout=5)
            assert info.value.code == ErrorCode.SYNTAX_ERROR

    run(main())


def test_undecodable_message_from_peer(fed: bool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode_frame(b"\x08\x08"))  # UPDATE_PAYMENT without its body
        await writer.drain()
        await reader.read()
        writer.close()

    async def main() -> None:
        async with client_of(handler, fed) as stream:
            with pytest.raises(RemoteProtocolError) as info:
                await stream.receive(timeout=5)
            assert info.value.code == ErrorCode.SYNTAX_ERROR

    run(main())


@pytest.mark.parametrize("trailer", [b"", b"\x00\x00\x00\x09\x08"], ids=["clean", "mid-frame"])
def test_eof_returns_none(trailer: bytes, fed: bool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode_frame(encode_message(ack())) + trailer)
        writer.close()  # peer leaves, like bitcoinj after its last frame
        await writer.wait_closed()

    async def main() -> None:
        async with client_of(handler, fed) as stream:
            assert await stream.receive(timeout=5) == ack()
            assert await stream.receive(timeout=5) is None
            assert await stream.receive(timeout=5) is None

    run(main())


def test_receive_timeout_then_message_still_arrives(fed: bool) -> None:
    go = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frame = encode_frame(encode_message(ack(b"late")))
        writer.write(frame[:3])  # a partial frame, then silence
        await go.wait()
        writer.write(frame[3:])
        await reader.read()
        writer.close()

    async def main() -> None:
        async with client_of(handler, fed) as stream:
            with pytest.raises(RemoteProtocolError, match=r"within 0\.1 s") as info:
                await stream.receive(timeout=0.1)
            assert info.value.code == ErrorCode.TIMEOUT
            go.set()
            assert await stream.receive(timeout=5) == ack(b"late")  # no bytes were lost

    run(main())


def test_close_flushes_last_frames(fed: bool) -> None:
    big = [ack(bytes([i]) * 30000) for i in range(40)]  # 1.2 MB, beyond socket buffers

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        stream = MessageStream(reader, writer)
        await stream.send(big[0])
        for msg in big[1:]:
            writer.write(encode_frame(encode_message(msg)))  # queued in the transport, no drain
        await stream.close()  # must deliver everything queued before it hangs up

    async def main() -> None:
        async with client_of(handler, fed) as client:
            await asyncio.sleep(0.2)  # the server closes while its data is still queued
            received = []
            while (msg := await client.receive(timeout=5)) is not None:
                received.append(msg)
            assert received == big

    run(main())


def test_close_tolerates_departed_peer_and_is_idempotent(fed: bool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()  # reset

    async def main() -> None:
        async with client_of(handler, fed) as stream:
            assert await stream.receive(timeout=5) is None
            with contextlib.suppress(ConnectionError):
                for _ in range(3):  # the first write may still be accepted locally
                    await stream.send(ack())
            await stream.close()
            await stream.close(flush=False)

    run(main())


def test_send_roundtrip_and_peername() -> None:
    async def echo(stream: MessageStream) -> None:
        while (msg := await stream.receive(timeout=5)) is not None:
            await stream.send(msg)

    async def main() -> None:
        server = await start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with await open_connection("127.0.0.1", port, timeout=5) as client:
            assert client.peername == f"127.0.0.1:{port}"
            await client.send(ack(b"1"))
            await client.send_many([ack(b"2"), ack(b"3")])
            got = [await client.receive(timeout=5) for _ in range(3)]
            assert [m.payment_ack.info for m in got if m] == [b"1", b"2", b"3"]
        server.close()
        await server.wait_closed()

    run(main())



def test_a_tap_takes_frames_as_they_arrive_and_what_it_leaves_is_received_in_order() -> None:
    msgs = [ack(bytes([i])) for i in range(4)]

    async def main() -> None:
        tapped: list[bytes] = []

        def tap(frames: list[bytes]) -> int:  # takes two frames, then leaves the rest
            taken = frames[:2 - len(tapped)]
            tapped.extend(taken)
            return len(taken)

        async with client_of(sending(msgs), fed=True) as stream:
            await stream.run_tapped(tap)
            rest = [await stream.receive(timeout=5) for _ in msgs[2:]]
        assert tapped == [encode_message(m) for m in msgs[:2]]
        assert rest == msgs[2:]

    run(main())


def test_a_fed_stream_stops_reading_while_too_many_frames_wait_and_loses_none() -> None:
    msgs = [ack(i.to_bytes(2, "big")) for i in range(PAUSE_AT + 50)]

    async def main() -> None:
        async with client_of(sending(msgs), fed=True) as stream:
            transport = cast(asyncio.Transport, stream._writer.transport)
            await until(lambda: not transport.is_reading(), what="the reading to pause")
            got = []
            while not transport.is_reading():
                got.append(await stream.receive(timeout=5))
            assert len(got) < len(msgs)  # resumed while some still wait (a tap can run)
            got += [await stream.receive(timeout=5) for _ in msgs[len(got):]]
        assert got == msgs

    run(main())
