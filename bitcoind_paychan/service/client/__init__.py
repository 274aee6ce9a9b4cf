"""The client side: ClientManager opens (or resumes) channels and pays through them over any
connection; PaymentClient is it dialing TCP (host:port) or WebSocket (ws://…) itself.

    client = PaymentClient(AsyncBitcoind(node), SQLiteStore("client.db"))
    channel = await client.open("127.0.0.1", 4242, value=1_000_000)
    await channel.pay(1_000, b"article 17")
    settlement = await channel.close()

An application that carries frames itself gives the manager a `dial(peer, timeout)` that
returns a `transport.CarriedStream` over its own Link, and feeds it what arrives.

One idea a module: manager.py (ClientManager: its live channels, `lookup`, open, resume,
refund), channel.py (Channel: one channel on a live connection), dialing.py (PaymentClient).
"""

from bitcoind_paychan.errors import ChannelExists, ChannelFailed, ChannelGone
from bitcoind_paychan.service.client.channel import PAY_TIMEOUT, Channel
from bitcoind_paychan.service.client.dialing import PaymentClient
from bitcoind_paychan.service.client.manager import (
    HANDSHAKE_TIMEOUT,
    ClientManager,
    Dialer,
    Found,
    Source,
)
from bitcoind_paychan.service.clientevents import ClientEvent, ClientEventHandler

__all__ = [  # what integrators import from here (the errors: their old home)
    "HANDSHAKE_TIMEOUT", "PAY_TIMEOUT", "Channel", "ChannelExists", "ChannelFailed",
    "ChannelGone", "ClientEvent", "ClientEventHandler", "ClientManager", "Dialer", "Found",
    "PaymentClient", "Source",
]
