"""The daemon's local HTTP listeners (control API, dashboard, metrics), served by aiohttp
(`transport.http.WebServer`).

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

from aiohttp import web

from bitcoind_paychan.transport.http import IDLE_TIMEOUT, MAX_HEADERS, MAX_LINE, WebServer

__all__ = ["IDLE_TIMEOUT", "MAX_BODY", "MAX_HEADERS", "MAX_LINE", "READ_TIMEOUT", "WebServer",
           "read_body"]

MAX_BODY = 1 << 20  # 1 MiB
READ_TIMEOUT = 10.0  # seconds to receive a request's body


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
