"""Proxied WebSockets: a paid request that asks to upgrade is connected to its route's
upstream over WebSocket, and the messages are carried both ways.

What the upstream sends is the answer: on a route priced per byte it is paid message by
message (its payload's bytes) out of the credit the request holds, then out of the channel's
credit as it grows; per second, the time the connection is open. When the credit is spent
the gateway stops reading the upstream (aiohttp's reader then stops reading its socket:
flow control pauses the upstream, nothing is dropped) until the client tops up through the
channel endpoint; not in time (the route's timeout), the connection is closed with code 4402.
A route priced per request charges its price once, as the connection opens. What the client
sends goes upstream unmetered. Closing either side closes the other; at the end the
connection is charged what it carried.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import web

from bitcoind_paychan.gateway.metered import Meter

PAYMENT_CLOSE = 4402  # the close code when the client did not top up in time
HANDSHAKE = frozenset(h.lower() for h in (
    "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Accept"))


def is_upgrade(request: web.Request) -> bool:
    """A request to open a WebSocket."""
    return request.method == "GET" and \
        request.headers.get("Upgrade", "").strip().lower() == "websocket"


def ws_url(url: str) -> str:
    """The upstream's http(s) URL as ws(s)."""
    return "ws" + url[4:] if url.startswith("http") else url


def handshake_headers(headers: dict[str, str]) -> dict[str, str]:
    """The forwarded headers without the handshake's own (aiohttp's client sets them)."""
    return {k: v for k, v in headers.items() if k.lower() not in HANDSHAKE}


async def carry(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse,
                meter: Meter | None) -> str:
    """Carry messages both ways until either side closes; the upstream's paid through
    `meter` (None: already paid). Why it ended."""
    up = asyncio.ensure_future(_from_client(client, upstream))
    try:
        return await _from_upstream(upstream, client, meter)
    finally:
        up.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await up
        if not upstream.closed:
            await upstream.close()
        if not client.closed:
            await client.close()


async def _from_client(client: web.WebSocketResponse,
                       upstream: aiohttp.ClientWebSocketResponse) -> None:
    async for message in client:
        if message.type == aiohttp.WSMsgType.TEXT:
            await upstream.send_str(message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await upstream.send_bytes(message.data)
    await upstream.close()


async def _from_upstream(upstream: aiohttp.ClientWebSocketResponse,
                         client: web.WebSocketResponse, meter: Meter | None) -> str:
    async for message in upstream:
        if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            break
        data = message.data.encode() if message.type == aiohttp.WSMsgType.TEXT \
            else message.data
        if meter is not None and not await _paid_for(meter, len(data)):
            await client.close(code=PAYMENT_CLOSE, message=b"payment required: the credit "
                               b"is spent and no top-up came in time")
            return "the client did not pay in time"
        if client.closed:
            return "the client went away"
        if message.type == aiohttp.WSMsgType.TEXT:
            await client.send_str(message.data)
        else:
            await client.send_bytes(message.data)
        if meter is not None:
            meter.sent += len(data)
    return "complete" if client.closed or upstream.closed else "the upstream ended"


async def _paid_for(meter: Meter, size: int) -> bool:
    """Wait until `size` more bytes are paid for (credit drawn, or a top-up): False if none
    came within the route's timeout. The upstream is not read meanwhile."""
    while meter.room < size:
        await meter.draw(size)
        if meter.room >= size:
            break
        if not await meter.top_up():
            return False
    return True
