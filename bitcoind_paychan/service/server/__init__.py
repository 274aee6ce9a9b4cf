"""The server side: ServerManager runs channels over any connection; PaymentServer is it
listening on TCP.

The manager carries out the machines' effects in order — store, broadcast, send — with the
durable store written before any message that acknowledges what was stored. An application
that has its own connections (WebSocket, HTTP, a queue) hands it each frame received on one
(`ServerConnection.receive`); the manager answers through the connection's `Link`. A
connection that claims a channel (opened, or resumed with its proof) takes the channel's lease
first (`store/leases.py`): its payments are stored only while it holds it, wherever (on
whichever instance) the client resumes next. A settlement, whichever path asks for it (the
client's CLOSE, a resume near expiry, the autopilot, the application), claims the channel's
settling duty (`settle:<txid>`), then takes the lease, re-reads the channel, and stores it
CLOSING only while that lease is current and the channel still OPEN: one settlement per channel.

One idea a module: manager.py (ServerManager), connection.py (ServerConnection), routing.py
(a transport's connection read into its ServerConnection; each channel to the connection
holding its lease), executor.py (the effects carried out in order), settlement.py (one
settlement per channel), tcp.py (PaymentServer), events.py (what the application hears).
"""

from bitcoind_paychan.service.server.connection import ServerConnection
from bitcoind_paychan.service.server.events import EventHandler, PaymentHandler, ServerEvent
from bitcoind_paychan.service.server.manager import (
    HANDSHAKE_TIMEOUT,
    RESUME_TIMEOUT,
    ServerManager,
)
from bitcoind_paychan.service.server.tcp import PaymentServer

__all__ = [
    "HANDSHAKE_TIMEOUT", "RESUME_TIMEOUT", "EventHandler", "PaymentHandler", "PaymentServer",
    "ServerConnection", "ServerEvent", "ServerManager",
]
