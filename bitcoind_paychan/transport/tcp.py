"""TCP, the protocol's own transport (bitcoinj's): length-prefixed frames (`wire.MessageStream`).
The one place TCP sockets are opened, by a server (`Listener`) or a client (`connect`)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from bitcoind_paychan.errors import ProxyHeaderError
from bitcoind_paychan.transport import proxyproto
from bitcoind_paychan.transport.accept import Acceptor, hand_over, peer_of, reading
from bitcoind_paychan.transport.base import Connections
from bitcoind_paychan.transport.limits import Admission, PeerGate
from bitcoind_paychan.transport.proxies import TrustedProxies
from bitcoind_paychan.transport.stream import (
    FrameProtocol,
    MessageStream,
    framed_connection,
    host_port,
    open_connection,
)
from bitcoind_paychan.transport.tls import ClientTLS, connect_tls
from bitcoind_paychan.transport.tlsdoor import TLSDoor

log = logging.getLogger(__name__)

Serve = Callable[[MessageStream, Admission], Awaitable[None]]


async def connect(host: str, port: int, timeout: float | None,
                  tls: ClientTLS | None = None) -> MessageStream:
    """Connect to a payment channel server (over TLS, verified by `tls`); TimeoutError after
    `timeout` seconds, TLSError if the server fails `tls`'s checks."""
    if tls is not None:
        return await connect_tls(host, port, tls, timeout)
    return await open_connection(host, port, timeout)


class Listener:
    """Accepts TCP connections: each address through `gate` (over its limits: closed before
    anything is read), then `door`'s TLS handshake if any, then `serve(stream, admission)` in
    its own task; the stream is closed when it returns.

    With `proxy_protocol` (the trusted balancers), a connection from one of them must begin
    with a PROXY header (v1 or v2, within `header_timeout`) and counts as the client it names;
    without a valid one it is refused (one log line). Other peers are not asked for one.
    Both read the accepted socket before any transport exists (`transport/accept.py`)."""

    def __init__(self, gate: PeerGate, serve: Serve, door: TLSDoor | None = None, *,
                 proxy_protocol: TrustedProxies | None = None,
                 header_timeout: float = 10.0) -> None:
        self.gate = gate
        self.door = door
        self.proxy_protocol = proxy_protocol
        self.header_timeout = header_timeout
        self._acceptor = Acceptor(self._accept)
        self._connections = Connections(serve)

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Accept connections on host:port; returns the bound (host, port)."""
        return await self._acceptor.listen(host, port)

    def close(self) -> None:
        """Accept no more connections."""
        self._acceptor.close()

    async def stop(self) -> None:
        """Accept no more; end every connection's task."""
        await self._acceptor.stop()
        await self._connections.stop()

    async def _accept(self, sock: socket.socket) -> None:
        """A connection, nothing read from it yet: the PROXY header, the gate, the TLS door,
        then its stream."""
        peer = peer_of(sock)
        if peer is None:  # gone already
            sock.close()
            return
        address, peername = peer[0], None
        if self.proxy_protocol and self.proxy_protocol.trusts_host(address):
            try:
                header = await proxyproto.read_header(sock, self.header_timeout)
            except ProxyHeaderError as exc:
                log.warning("%s: refused a connection from a trusted proxy: %s",
                            host_port(*peer), exc)
                sock.close()
                return
            if header.client is not None:  # else the proxy's own (a health check)
                address, peername = header.client, host_port(header.client, header.port)
        admission = self.gate.admit(address)
        if admission is None:  # over a per-peer limit: hang up before reading anything
            sock.close()
            return
        loop = asyncio.get_running_loop()
        protocol = FrameProtocol(loop)
        if self.door is None:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, hand_over(sock))
        else:
            secure = await self.door.accept(sock, peername or host_port(*peer),
                                            lambda: protocol)
            if secure is None:
                admission.release()
                return
            transport = reading(secure)
        await self._connections.run(framed_connection(transport, protocol, loop, peername),
                                    admission)
