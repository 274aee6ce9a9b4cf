"""The server's TLS door: the handshake of every accepted connection, for TCP streams and for
the WebSocket listener's HTTP server alike.

A connection reaches the door only once the listener's PeerGate admitted it, and holds that
admission (one of its address's handshakes) until the door is through; the handshake must end
within the server's handshake timeout. So a stranger can hold no more sockets with TLS than
without. The door peeks at the first byte of the accepted socket before any transport exists
(`transport/accept.py`: no event loop's transport can have read it first): a plain client
(bitcoinj's, or `ws://`) is told in its own protocol that this server speaks TLS. Each refusal
is one log line naming the peer and the reason, and one PeerError for the server's counters.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.effects import PeerError
from bitcoind_paychan.errors import ErrorCode, TLSError
from bitcoind_paychan.transport.accept import Acceptor, hand_over, peer_of, readable
from bitcoind_paychan.transport.limits import PeerGate
from bitcoind_paychan.transport.tls import ServerTLS
from bitcoind_paychan.wire.codec import encode_message
from bitcoind_paychan.wire.framing import encode_frame

log = logging.getLogger(__name__)
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

    async def accept(self, sock: socket.socket, peer: str,
                     protocol: Callable[[], asyncio.BaseProtocol],
                     refusal: bytes = TCP_REFUSAL) -> asyncio.BaseTransport | None:
        """The handshake of an accepted socket, nothing read from it yet: `protocol()` gets the
        encrypted connection (its transport returned). None: refused (logged, counted, the
        socket closed); a plain client is first sent `refusal`, in its own protocol."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                await readable(sock)
                first = sock.recv(1, socket.MSG_PEEK)
                if not first:
                    raise ConnectionResetError("hung up before the TLS handshake")
                if first != TLS_HANDSHAKE:
                    await loop.sock_sendall(sock, refusal)
                    raise TLSError("the peer does not speak TLS (a plain client, as bitcoinj's)")
                transport, _ = await loop.connect_accepted_socket(
                    protocol, hand_over(sock), ssl=self.context,
                    ssl_handshake_timeout=self.timeout)
                return transport
        except TLSError as exc:
            self.refused(peer, exc)
        except TimeoutError:
            self.refused(peer, TLSError(f"no TLS handshake within {self.timeout} s"))
        except ssl.SSLError as exc:
            self.refused(peer, TLSError(server_reason(exc)))
        except (ConnectionError, OSError):
            self.refused(peer, TLSError(
                "the peer hung up during the TLS handshake: a client does so when it does not "
                "trust our certificate (expired, for another host name, or from a CA it does "
                "not know)"))
        sock.close()  # a no-op once handed over
        return None

    async def listen(self, protocol: Callable[[], asyncio.BaseProtocol], gate: PeerGate,
                     host: str, port: int) -> tuple[Acceptor, tuple[str, int]]:
        """Listen on host:port for `protocol` (an HTTP server's) behind the gate and this
        door: it gets each connection once its TLS handshake is done. The acceptor (stop it
        to stop listening) and the bound (host, port)."""

        async def handle(sock: socket.socket) -> None:
            address = peer_of(sock)
            admission = gate.admit(address[0] if address else "")
            if admission is None:  # over a per-peer limit: hang up before reading anything
                sock.close()
                return
            peer = f"{address[0]}:{address[1]}" if address else "unknown peer"
            try:
                await self.accept(sock, peer, protocol, HTTP_REFUSAL)
            finally:
                admission.release()

        acceptor = Acceptor(handle)
        return acceptor, await acceptor.listen(host, port)

    def refused(self, peer: str, exc: TLSError) -> None:
        log.info("%s: TLS refused: %s", peer, exc)
        if self.on_refused:
            self.on_refused(PeerError(ErrorCode.OTHER, f"TLS: {exc}", remote=False))


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
