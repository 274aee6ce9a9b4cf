"""PaymentClient: a ClientManager that dials its servers itself (TCP, WebSocket)."""

from __future__ import annotations

from bitcoind_paychan.service.client.channel import Channel
from bitcoind_paychan.service.client.manager import ClientManager


class PaymentClient(ClientManager):
    """A ClientManager that dials its servers itself: TCP (the protocol's own transport,
    bitcoinj's) or WebSocket (ws://host:port/path, for servers behind HTTP proxies)."""

    async def open(
        self, host: str, port: int | None = None, value: int | None = None, *,
        version: int | None = None, new: bool = False,
    ) -> Channel:
        """`open_channel` to host:port, or to a WebSocket URL given as `host` alone."""
        peer = host if port is None else f"{host}:{port}"
        return await self.open_channel(peer, value, version=version, new=new)
