"""The daemon's local HTTP listeners (control API, dashboard, metrics), served by aiohttp.

    server = WebServer(app, "127.0.0.1", 0)
    host, port = await server.start()     # port 0: any free port; start() says which
    ...
    await server.stop()

Limits every listener shares: a request line or header line over `MAX_LINE` bytes, or more
than `MAX_HEADERS` headers, is refused by aiohttp's parser (400/431) before any handler runs,
as is a malformed `Content-Length`; a body over `MAX_BODY` is refused with 413 without being
read (`read_body`); a body not received within `READ_TIMEOUT` seconds gets 408; an idle
connection, or one whose headers never end, is closed after `IDLE_TIMEOUT` seconds. A handler
that raises gets 500 (logged by aiohttp); nothing a client does stops the server.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # 1 MiB
MAX_LINE = 8190  # request line or one header line
MAX_HEADERS = 100
READ_TIMEOUT = 10.0  # seconds to receive a request's body
IDLE_TIMEOUT = 10.0  # seconds an idle (keep-alive) connection stays open
STOP_GRACE = 5.0  # seconds stop() lets running handlers finish their answer
LINGER = 1.0  # seconds a refused body is still read (and dropped) so the client sees the answer


async def read_body(request: web.Request, limit: int = MAX_BODY,
                    timeout: float = READ_TIMEOUT) -> bytes:
    """The request's body: 413 over `limit` (the declared length is checked before reading),
    408 if it does not arrive within `timeout` seconds."""
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length,
                                            text=f"body over {limit} bytes\n")
    try:
        async with asyncio.timeout(timeout):
            return await request.content.readexactly(request.content_length or 0) \
                if request.content_length is not None else await _read_capped(request, limit)
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="request not received in time\n") from None
    except asyncio.IncompleteReadError:
        raise web.HTTPBadRequest(text="the body ended before its Content-Length\n") from None


async def _read_capped(request: web.Request, limit: int) -> bytes:
    """A body of unknown length (chunked), refused once it passes `limit`."""
    body = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        body += chunk
        if len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body),
                                                text=f"body over {limit} bytes\n")
    return bytes(body)


class _ClientFaults(logging.Filter):
    """aiohttp logs each malformed request at ERROR with a traceback; a client's fault is
    one DEBUG line here (the client got its 400), not an error of the daemon."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            log.debug("refused a malformed request: %s", str(error).splitlines()[0][:200])
            return False
        return True


_server_log = logging.getLogger(__name__ + ".aiohttp")
_server_log.addFilter(_ClientFaults())


class WebServer:
    """Serves the aiohttp application `app` on `host:port`."""

    def __init__(self, app: web.Application, host: str, port: int, *,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.idle_timeout = idle_timeout
        self._runner: web.AppRunner | None = None

    async def start(self) -> tuple[str, int]:
        """Listen; the bound (host, port)."""
        runner = web.AppRunner(self.app, access_log=None, logger=_server_log,
                               shutdown_timeout=STOP_GRACE, lingering_time=LINGER,
                               keepalive_timeout=self.idle_timeout, max_line_size=MAX_LINE,
                               max_field_size=MAX_LINE, max_headers=MAX_HEADERS)
        await runner.setup()
        # SO_REUSEADDR (asyncio's default): a restart binds again while the last run's
        # connections linger in TIME_WAIT; a port another program listens on still fails.
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server
        assert isinstance(server, asyncio.Server)
        address = server.sockets[0].getsockname()
        return address[0], address[1]

    async def stop(self) -> None:
        """Stop listening, let running handlers answer (briefly), close every connection."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
