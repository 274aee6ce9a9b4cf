"""The server's TLS door: the handshake of every accepted connection, for TCP streams and for
the WebSocket listener's HTTP server alike.

A connection reaches the door only once the listener's PeerGate admitted it, and holds that
admission (one of its address's handshakes) until the door is through; the handshake must end
within the server's handshake timeout. So a stranger can hold no more sockets with TLS than
without. The door peeks at the first byte before the handshake: a plain client (bitcoinj's,
or `ws://`) is told in its own protocol that this server speaks TLS. Each refusal is one log
line naming the peer and the reason, and one PeerError for the server's counters.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.effects import PeerError
from bitcoind_paychan.errors import ErrorCode, TLSError
from bitcoind_paychan.transport.limits import PeerGate
from bitcoind_paychan.transport.tls import ServerTLS
from bitcoind_paychan.wire.codec import encode_message
from bitcoind_paychan.wire.framing import encode_frame

log = logging.getLogger(__name__)
T = TypeVar("T")
TLS_HANDSHAKE = b"\x16"  # a TLS handshake record's first byte (read as a frame: > 350 MB)
SPEAKS_TLS = "this server speaks TLS: connect with TLS, or to a plain TCP server"
TCP_REFUSAL = encode_frame(encode_message(messages.error(ErrorCode.OTHER, SPEAKS_TLS)))
TLS_ONLY_HEADER = "Paychan-TLS-Only"  # on the answer to a plain HTTP client
HTTP_REFUSAL = (f"HTTP/1.1 400 This server speaks TLS\r\n{TLS_ONLY_HEADER}: use a wss:// URL"
                "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").encode()


class TLSDoor:
    """TLS for a listener: `tls`'s context (built here: TLSError if its files are unusable),
    handshakes within `timeout`, refusals logged and passed to `on_refused`."""

    def __init__(self, tls: ServerTLS, timeout: float,
                 on_refused: Callable[[PeerError], object] | None = None) -> None:
        self.context = tls.context()
        self.timeout = timeout
        self.on_refused = on_refused
        self._opening: set[asyncio.Task[None]] = set()

    async def accept(self, writer: asyncio.StreamWriter, peer: str) -> bool:
        """A TCP stream's handshake, run before anything was read from it. False: refused
        (logged, counted; the connection is closed)."""
        try:
            await _handshake(writer.transport, lambda: writer.start_tls(
                self.context, ssl_handshake_timeout=self.timeout), self.timeout, TCP_REFUSAL)
            return True
        except TLSError as exc:
            self.refused(peer, exc)
            return False

    async def listen(self, protocol: Callable[[], asyncio.BaseProtocol], gate: PeerGate,
                     host: str, port: int) -> asyncio.Server:
        """Listen on host:port for `protocol` (an HTTP server's) behind the gate and this
        door: it gets each connection once its TLS handshake is done."""
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: _Door(self, protocol, gate), host, port)

    async def stop(self) -> None:
        """Give up the handshakes under way."""
        for task in list(self._opening):
            task.cancel()
        await asyncio.gather(*self._opening, return_exceptions=True)

    def refused(self, peer: str, exc: TLSError) -> None:
        log.info("%s: TLS refused: %s", peer, exc)
        if self.on_refused:
            self.on_refused(PeerError(ErrorCode.OTHER, f"TLS: {exc}", remote=False))

    async def _open(self, transport: asyncio.Transport, inner: asyncio.BaseProtocol,
                    peer: str, release: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        try:
            secure = await _handshake(transport, lambda: loop.start_tls(
                transport, inner, self.context, server_side=True,
                ssl_handshake_timeout=self.timeout), self.timeout, HTTP_REFUSAL)
        except TLSError as exc:
            self.refused(peer, exc)
            return
        finally:
            release()
        if secure is not None:
            inner.connection_made(secure)


class _Door(asyncio.Protocol):
    """One connection at the door: admitted by the gate (else aborted at once), reading
    paused until the door hands it, encrypted, to the inner protocol."""

    def __init__(self, door: TLSDoor, protocol: Callable[[], asyncio.BaseProtocol],
                 gate: PeerGate) -> None:
        self.door, self.protocol, self.gate = door, protocol, gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = reading(transport)
        address = transport.get_extra_info("peername")
        admission = self.gate.admit(str(address[0]) if address else "")
        if admission is None:  # over a per-peer limit: hang up before reading anything
            transport.abort()
            return
        transport.pause_reading()  # before the first read: the door peeks itself
        peer = f"{address[0]}:{address[1]}" if address else "unknown peer"
        task = asyncio.ensure_future(self.door._open(transport, self.protocol(), peer,
                                                     admission.release))
        self.door._opening.add(task)
        task.add_done_callback(self.door._opening.discard)


async def _handshake(transport: asyncio.BaseTransport,
                     start: Callable[[], Awaitable[T]], timeout: float, refusal: bytes) -> T:
    """Peek, then run `start` (the handshake) within `timeout`; TLSError with the reason."""
    transport = reading(transport)
    try:
        async with asyncio.timeout(timeout):
            if not await _starts_with_tls(transport):
                transport.write(refusal)
                transport.close()
                raise TLSError("the peer does not speak TLS (a plain client, as bitcoinj's)")
            return await start()
    except TimeoutError:
        transport.abort()
        raise TLSError(f"no TLS handshake within {timeout} s") from None
    except ssl.SSLError as exc:
        transport.abort()
        raise TLSError(server_reason(exc)) from exc
    except ConnectionError as exc:
        transport.abort()
        raise TLSError("the peer hung up during the TLS handshake: a client does so when it "
                       "does not trust our certificate (expired, for another host name, or "
                       "from a CA it does not know)") from exc


def reading(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """A socket's transport, which reads and writes (uvloop's too: not asyncio subclasses)."""
    return cast(asyncio.Transport, transport)


async def _starts_with_tls(transport: asyncio.Transport) -> bool:
    """Wait for the peer's first byte without consuming it: a TLS handshake record's?

    The transport stops reading first (nothing was read yet: this runs before any other
    await on the connection); the byte is peeked through a duplicate of the socket."""
    transport.pause_reading()
    socket_fd = transport.get_extra_info("socket").fileno()
    loop = asyncio.get_running_loop()
    with socket.socket(fileno=os.dup(socket_fd)) as peek:
        readable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(peek.fileno(), ready)
        try:
            await readable
        finally:
            loop.remove_reader(peek.fileno())
        first = peek.recv(1, socket.MSG_PEEK)
    if not first:
        raise ConnectionResetError("hung up before the TLS handshake")
    return first == TLS_HANDSHAKE


def server_reason(exc: ssl.SSLError) -> str:
    """What a failed handshake means for the server (the client refused us, or it is not
    speaking TLS)."""
    reason = exc.reason or str(exc)
    known = {
        "WRONG_VERSION_NUMBER": "the peer does not speak TLS (a plain TCP client)",
        "HTTP_REQUEST": "the peer sent plain HTTP, not TLS",
        "UNKNOWN_CA": "the peer does not trust our certificate (unknown CA)",
        "CERTIFICATE_EXPIRED": "the peer refused our certificate as expired",
        "BAD_CERTIFICATE": "the peer refused our certificate (wrong host name?)",
        "CERTIFICATE_UNKNOWN": "the peer refused our certificate",
        "NO_SHARED_CIPHER": "no cipher in common with the peer",
        "UNSUPPORTED_PROTOCOL": "the peer's TLS version is too old",
    }
    return next((text for key, text in known.items() if key in reason),
                f"TLS handshake failed: {reason}")
