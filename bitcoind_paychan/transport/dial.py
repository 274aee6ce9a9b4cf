"""The client's default dialer: a peer is host:port (TCP) or a ws:// or wss:// URL."""

from __future__ import annotations

from bitcoind_paychan.transport import tcp, websocket
from bitcoind_paychan.transport.base import Stream
from bitcoind_paychan.transport.tls import ClientTLS


def is_url(peer: str) -> bool:
    return peer.startswith(("ws://", "wss://"))


def split_peer(peer: str) -> tuple[str, int]:
    """host:port ([v6]:port) as (host, port); ValueError if it is not one."""
    host, _, port = peer.rpartition(":")
    return host.strip("[]"), int(port)


async def dial(peer: str, timeout: float | None, tls: ClientTLS | None = None) -> Stream:
    """Connect to `peer` within `timeout` seconds (TimeoutError, OSError), over TLS verified
    by `tls` (for TCP; wss:// is TLS, by default against the system's CAs): TLSError if the
    server fails its checks."""
    if is_url(peer):
        return await websocket.connect(peer, timeout, tls)
    return await tcp.connect(*split_peer(peer), timeout, tls)
