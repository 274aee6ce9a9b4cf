"""PaymentServer: a ServerManager listening on TCP (optionally TLS, behind PROXY
protocol balancers)."""

from __future__ import annotations

import logging

from bitcoind_paychan.errors import LocalProtocolError
from bitcoind_paychan.service.server.manager import ServerManager
from bitcoind_paychan.transport import tcp
from bitcoind_paychan.transport.limits import Admission
from bitcoind_paychan.transport.stream import MessageStream

# The "server" subsystem's lines (daemon/logs.py), as before the server had its package.
log = logging.getLogger("bitcoind_paychan.service.server")


class PaymentServer(ServerManager):
    """A ServerManager listening on TCP (the protocol's own transport, bitcoinj's); over TLS
    with `tls` (certificate and key files; off by default, as bitcoinj peers speak plain TCP).
    With `proxy_protocol` (trusted balancers), their connections carry a PROXY header naming
    the client, whom the limits count. Takes ServerManager's arguments."""

    _listener: tcp.Listener | None = None
    _bound: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) it listens on; LocalProtocolError before `listen`."""
        if self._listener is None or self._bound is None:
            raise LocalProtocolError("the payment server is not listening: await listen()")
        return self._bound

    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Start the autopilot and accept connections; returns the bound (host, port)."""
        door = self.tls_door()
        await self.start()
        self._listener = tcp.Listener(self.gate, self._serve, door,
                                      proxy_protocol=self.proxy_protocol,
                                      header_timeout=self.handshake_timeout)
        bound = self._bound = await self._listener.listen(host, port)
        log.info("payment server listening on %s:%s%s", *bound, " (TLS)" if door else "")
        return bound

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let each connection finish the message it is handling (a payment
        being stored and acknowledged), then hang up; stop the autopilot."""
        if self._listener:
            self._listener.close()
        await self.drain(grace)
        if self._listener:
            await self._listener.stop()
        await super().stop(grace)

    async def _serve(self, stream: MessageStream, admission: Admission) -> None:
        await self.serve(stream, admission)
