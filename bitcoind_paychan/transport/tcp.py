"""TCP, the protocol's own transport (bitcoinj's): length-prefixed frames (`wire.MessageStream`).
The one place TCP sockets are opened, by a server (`Listener`) or a client (`connect`)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

from bitcoind_paychan.service.limits import Admission, PeerGate
from bitcoind_paychan.transport.base import Connections
from bitcoind_paychan.wire import MessageStream, open_connection

Serve = Callable[[MessageStream, Admission], Awaitable[None]]


async def connect(host: str, port: int, timeout: float | None,
                  ssl_context: ssl.SSLContext | None = None) -> MessageStream:
    """Connect to a payment channel server; TimeoutError after `timeout` seconds."""
    return await open_connection(host, port, timeout, ssl_context)


class Listener:
    """Accepts TCP connections: each address through `gate` (over its limits: aborted before
    anything is read), then `serve(stream, admission)` in its own task; the stream is closed
    when it returns."""

    def __init__(self, gate: PeerGate, serve: Serve,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.gate = gate
        self.ssl_context = ssl_context
        self._server: asyncio.Server | None = None
        self._connections = Connections(serve)

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Accept connections on host:port; returns the bound (host, port)."""
        self._server = await asyncio.start_server(self._accept, host, port, ssl=self.ssl_context)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        """Accept no more connections."""
        if self._server:
            self._server.close()

    async def stop(self) -> None:
        """Accept no more; end every connection's task."""
        self.close()
        await self._connections.stop()
        if self._server:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        admission = self.gate.admit(str(peer[0]) if peer else "")
        if admission is None:  # over a per-peer limit: hang up before reading anything
            writer.transport.abort()
            return
        await self._connections.run(MessageStream(reader, writer), admission)
