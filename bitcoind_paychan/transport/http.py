"""HTTP listeners on aiohttp (the WebSocket transport, the daemon's control API, dashboard and
metrics): the one place they open listening sockets.

Limits every listener shares: a request line or header line over `MAX_LINE` bytes, or more
than `MAX_HEADERS` headers, is refused by aiohttp's parser (400/431) before any handler runs,
as is a malformed `Content-Length`; an idle connection, or one whose headers never end, is
closed after `IDLE_TIMEOUT` seconds. A handler that raises gets 500 (logged by aiohttp);
nothing a client does stops the server.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from bitcoind_paychan.transport.accept import Acceptor
from bitcoind_paychan.transport.limits import PeerGate
from bitcoind_paychan.transport.tlsdoor import TLSDoor

log = logging.getLogger(__name__)

MAX_LINE = 8190  # request line or one header line
MAX_HEADERS = 100
IDLE_TIMEOUT = 10.0  # seconds an idle (keep-alive) connection stays open
STOP_GRACE = 5.0  # seconds stop() lets running handlers finish their answer
LINGER = 1.0  # seconds a refused body is still read (and dropped) so the client sees the answer


class _ClientFaults(logging.Filter):
    """aiohttp logs each malformed request at ERROR with a traceback; a client's fault is
    one DEBUG line here (the client got its 400), not an error of the daemon. TLS spoken to
    a plain listener (which aiohttp logs at DEBUG) is one INFO line naming the peer."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and "HTTPS traffic" in str(error):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            log.info("%s spoke TLS to this plain HTTP listener: it should use ws://, or the "
                     "listener TLS (server.tls_cert_file)", peer)
            return False
        if isinstance(error, HttpProcessingError):
            log.debug("refused a malformed request: %s", str(error).splitlines()[0][:200])
            return False
        return record.levelno >= logging.INFO or log.isEnabledFor(logging.DEBUG)


_server_log = logging.getLogger(__name__ + ".aiohttp")
_server_log.addFilter(_ClientFaults())
_server_log.setLevel(logging.DEBUG)  # its DEBUG lines reach the filter, which keeps them at
# this module's level


class WebServer:
    """Serves the aiohttp application `app` on `host:port`; over TLS with `door` (each
    connection admitted by `gate` first)."""

    def __init__(self, app: web.Application, host: str, port: int, *,
                 idle_timeout: float = IDLE_TIMEOUT, door: TLSDoor | None = None,
                 gate: PeerGate | None = None) -> None:
        self.app = app
        self.door = door
        self.gate = gate
        self.host = host
        self.port = port
        self.idle_timeout = idle_timeout
        self._runner: web.AppRunner | None = None
        self._tls_server: Acceptor | None = None

    async def start(self) -> tuple[str, int]:
        """Listen; the bound (host, port)."""
        runner = web.AppRunner(self.app, access_log=None, logger=_server_log,
                               shutdown_timeout=STOP_GRACE, lingering_time=LINGER,
                               keepalive_timeout=self.idle_timeout, max_line_size=MAX_LINE,
                               max_field_size=MAX_LINE, max_headers=MAX_HEADERS)
        await runner.setup()
        if self.door is not None:
            return await self._start_tls(runner)
        # SO_REUSEADDR (asyncio's default): a restart binds again while the last run's
        # connections linger in TIME_WAIT; a port another program listens on still fails.
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = cast(asyncio.Server, site._server)  # uvloop's Server too (not a subclass)
        address = server.sockets[0].getsockname()
        return address[0], address[1]

    async def _start_tls(self, runner: web.AppRunner) -> tuple[str, int]:
        assert self.door is not None and runner.server is not None
        try:
            self._tls_server, address = await self.door.listen(
                runner.server, self.gate or PeerGate(), self.host, self.port)
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return address

    async def stop(self) -> None:
        """Stop listening, let running handlers answer (briefly), close every connection."""
        runner, self._runner = self._runner, None
        if self._tls_server is not None:
            await self._tls_server.stop()
        if runner is not None:
            await runner.cleanup()
