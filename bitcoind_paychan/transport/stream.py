"""asyncio adapter: framed TwoWayChannelMessages over a StreamReader/StreamWriter pair."""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import cast

from bitcoind_paychan.errors import ErrorCode, RemoteProtocolError
from bitcoind_paychan.wire import paychan_pb2 as pb
from bitcoind_paychan.wire.codec import decode_message, encode_message
from bitcoind_paychan.wire.framing import FrameDecoder, encode_frame

log = logging.getLogger("bitcoind_paychan.wire.stream")  # logging.levels: `wire`, as ever

READ_SIZE = 65536
WRITE_HIGH_WATER = 64 * 1024  # bytes buffered for the peer: asyncio's default high-water mark
PAUSE_AT = 256  # frames received and not yet handled: stop reading until they are
CLOSE_TIMEOUT = 5.0
"""Seconds close() waits for buffered bytes to reach a peer before it aborts the socket."""


def host_port(host: str, port: object) -> str:
    """'host:port', or '[v6]:port' for an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def frame(msg: pb.TwoWayChannelMessage) -> bytes:
    return encode_frame(encode_message(msg))


Tap = Callable[[list[bytes]], int]
"""Takes frames (payloads) as they arrive, in the protocol's data_received; returns how many
it took, in order (the rest wait for `receive`)."""


class FrameProtocol(asyncio.StreamReaderProtocol):
    """A StreamReaderProtocol whose received bytes go to its MessageStream, in data_received,
    not through a StreamReader: the stream parses frames as they arrive, and may hand them to
    a tap (a server's payments handled in the loop's callback, no task woken). Bytes received
    before the stream is attached are kept for it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._unused = asyncio.StreamReader(loop=loop)  # kept: the base holds it weakly
        super().__init__(self._unused, loop=loop)
        self._stream: MessageStream | None = None
        self._early: list[bytes] = []
        self._ended: tuple[Exception | None] | None = None

    def attach(self, stream: MessageStream) -> None:
        self._stream = stream
        for data in self._early:
            stream._received(data)
        self._early = []
        if self._ended is not None:
            stream._ended(self._ended[0])

    def data_received(self, data: bytes) -> None:
        if self._stream is None:
            self._early.append(data)
        else:
            self._stream._received(data)

    def eof_received(self) -> bool | None:
        self._end(None)
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc)
        super().connection_lost(exc)

    def _end(self, exc: Exception | None) -> None:
        if self._stream is None:
            self._ended = self._ended or (exc,)
        else:
            self._stream._ended(exc)


def framed_connection(transport: asyncio.BaseTransport, protocol: FrameProtocol,
                      loop: asyncio.AbstractEventLoop, peername: str | None = None
                      ) -> MessageStream:
    """The MessageStream of an accepted connection whose protocol is `protocol`."""
    writer = asyncio.StreamWriter(transport, protocol, None, loop)  # type: ignore[arg-type]
    return MessageStream(None, writer, peername, protocol)


class MessageStream:
    """One peer connection. Not safe for concurrent receive() calls (one reader task).

    Over a StreamReader (`reader`), or, with a FrameProtocol, fed by it (`reader` None): then
    `run_tapped` can hand frames to a tap as they arrive."""

    def __init__(self, reader: asyncio.StreamReader | None, writer: asyncio.StreamWriter,
                 peername: str | None = None, protocol: FrameProtocol | None = None) -> None:
        self._reader = reader
        self._writer = writer
        self._peername = peername  # None: the socket's peer (else a proxy's client)
        self._decoder = FrameDecoder()
        self._pending: collections.deque[bytes] = collections.deque()
        self._eof = False
        self._closed = False
        self._tap: Tap | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        if protocol is not None:
            protocol.attach(self)

    @property
    def peername(self) -> str:
        """The peer's address as 'host:port' ('[v6]:port'), for logs and errors."""
        if self._peername is not None:
            return self._peername
        addr = self._writer.get_extra_info("peername")
        if isinstance(addr, tuple) and len(addr) >= 2:
            return host_port(str(addr[0]), addr[1])
        return str(addr) if addr else "unknown peer"

    async def receive(self, timeout: float | None) -> pb.TwoWayChannelMessage | None:
        """Next message from the peer, or None once the peer has left.

        None means EOF or a reset connection: bitcoinj often hangs up right after (or without)
        its last frame, so a partial frame at EOF is discarded, not an error. Raises
        RemoteProtocolError with SYNTAX_ERROR for a bad frame or message, TIMEOUT if nothing
        complete arrives within `timeout` seconds (None waits forever).
        """
        if not self._pending:
            try:
                if timeout is None:  # no timer to arm and cancel per message
                    await self._fill()
                else:
                    async with asyncio.timeout(timeout):
                        await self._fill()
            except TimeoutError:
                raise RemoteProtocolError(
                    f"no message from {self.peername} within {timeout} s", code=ErrorCode.TIMEOUT
                ) from None
            if not self._pending:
                return None
        return decode_message(self._taken())

    def receive_buffered(self) -> pb.TwoWayChannelMessage | None:
        """The next message if it has already arrived whole, else None (never waits)."""
        return decode_message(self._taken()) if self._pending else None

    def _taken(self) -> bytes:
        """The next pending frame, taken; reading resumes once few are left waiting."""
        frame = self._pending.popleft()
        if self._paused and len(self._pending) <= PAUSE_AT // 2:
            self._paused = False
            cast(asyncio.Transport, self._writer.transport).resume_reading()
        return frame

    async def _fill(self) -> None:
        """Read until at least one payload is pending or the peer has left."""
        while not self._pending:
            if self._decoder.failed:
                self._decoder.feed(b"")  # raises the stored framing error
            if self._eof:
                return
            if self._reader is None:  # fed by its FrameProtocol
                await self._arrival()
                continue
            try:
                data = await self._reader.read(READ_SIZE)
            except OSError as exc:  # reset, aborted, keepalive timeout: the peer is gone
                log.info("reading from %s failed: %s", self.peername, exc)
                data = b""
            if not data:
                self._eof = True
                if self._decoder.buffered:
                    log.info(
                        "%s left mid-frame; %d bytes discarded",
                        self.peername,
                        self._decoder.buffered,
                    )
                return
            self._pending.extend(self._decoder.feed(data))

    # -- fed by a FrameProtocol -------------------------------------------------------------

    async def run_tapped(self, tap: Tap) -> None:
        """Hand the frames that arrive to `tap`, in the protocol's data_received, until it
        leaves some (they wait for `receive`), the peer leaves or breaks the framing, or
        `untap()`. Returns at once if something is pending already, or over a StreamReader."""
        if self._reader is not None:
            return
        self._tap = tap
        try:
            while self._tap is not None and not self._pending and not self._eof and not (
                    self._decoder.failed):
                await self._arrival()
        finally:
            self._tap = None

    def untap(self) -> None:
        """Stop handing frames to the tap (`run_tapped` returns)."""
        self._tap = None
        self._wake()

    @property
    def backed_up(self) -> bool:
        """Has the peer left more unread than a drain would wait for (asyncio's high-water
        mark)? A tap then leaves frames to the reader, whose sends drain."""
        return self._writer.transport.get_write_buffer_size() >= WRITE_HIGH_WATER

    def post_framed(self, data: bytes) -> None:
        """Write frames encoded earlier now, unless the connection is closing (the caller
        bounds how much it writes, as a payment window does)."""
        if not self._writer.transport.is_closing():
            self._writer.write(data)

    async def _arrival(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _received(self, data: bytes) -> None:
        if self._eof:
            return
        try:
            frames = self._decoder.feed(data)
        except RemoteProtocolError:
            frames = []  # stored: the reader raises it
        if self._tap is not None and not self._pending and frames:
            taken = self._tap(frames)
            if taken < len(frames):
                self._tap = None
                frames = frames[taken:]
            else:
                frames = []
        if frames:
            self._pending.extend(frames)
            if len(self._pending) >= PAUSE_AT and not self._paused:  # as a StreamReader's limit
                self._paused = True
                cast(asyncio.Transport, self._writer.transport).pause_reading()
        if frames or self._decoder.failed:
            self._wake()

    def _ended(self, exc: Exception | None) -> None:
        if self._eof:
            return
        self._eof = True
        if exc is not None:
            log.info("reading from %s failed: %s", self.peername, exc)
        if self._decoder.buffered:
            log.info("%s left mid-frame; %d bytes discarded", self.peername,
                     self._decoder.buffered)
        self._wake()

    async def send(self, msg: pb.TwoWayChannelMessage) -> None:
        """Frame, write and drain one message. ConnectionError if the peer has gone."""
        self._writer.write(frame(msg))
        await self._writer.drain()

    async def send_many(self, msgs: Iterable[pb.TwoWayChannelMessage]) -> None:
        """Send several messages in one write and one drain; nothing is sent if one is invalid."""
        data = b"".join([frame(m) for m in msgs])
        if data:
            self._writer.write(data)
            await self._writer.drain()

    def post(self, msgs: Iterable[pb.TwoWayChannelMessage]) -> None:
        """Write messages without waiting for the kernel to take them (the caller bounds how
        much it posts, as a payment window does)."""
        self._writer.write(b"".join([frame(m) for m in msgs]))

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        """Send encoded messages (`encode_message(m)` each), framed, in one write and drain."""
        self._writer.write(b"".join([encode_frame(f) for f in frames]))
        await self._writer.drain()

    async def write_framed(self, data: bytes) -> None:
        """Write frames encoded earlier (`encode_frame(encode_message(m))`, joined)."""
        self._writer.write(data)
        await self._writer.drain()

    async def close(self, flush: bool = True, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close the connection; with `flush`, deliver what was written first.

        Idempotent, and quiet if the peer already left. A peer that does not read for
        `timeout` seconds gets the socket aborted.
        """
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        try:
            async with asyncio.timeout(timeout):
                if flush:
                    await writer.drain()
                else:
                    writer.transport.abort()
                writer.close()  # the transport still sends what is buffered, then FIN
                await writer.wait_closed()
        except (ConnectionError, TimeoutError):
            writer.transport.abort()
        except asyncio.CancelledError:
            writer.transport.abort()
            raise

    async def __aenter__(self) -> MessageStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def open_connection(host: str, port: int, timeout: float | None,
                          ssl_context: ssl.SSLContext | None = None) -> MessageStream:
    """Connect to a payment channel peer; TimeoutError if that takes over `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context)
    except TimeoutError:
        raise TimeoutError(f"connecting to {host}:{port} timed out after {timeout} s") from None
    return MessageStream(reader, writer)


async def start_server(
    handler: Callable[[MessageStream], Awaitable[None]], host: str | None, port: int
) -> asyncio.Server:
    """Listen on host:port; run `handler` per connection and close its stream afterwards."""

    async def _on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = MessageStream(reader, writer)
        try:
            await handler(stream)
        finally:
            await stream.close()

    return await asyncio.start_server(_on_connect, host, port)
