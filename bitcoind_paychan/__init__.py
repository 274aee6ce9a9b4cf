"""bitcoind-paychan: unidirectional (Spilman) payment channels beside a bitcoind.

The public API is what this package exports (`__all__`), grouped as the README's "Three
levels" use it; docs/api.md says the same in prose and docs/events.md gives the events' order.

- Services (level 3): PaymentServer, PaymentClient, Channel; TLS: ServerTLS, ClientTLS.
- Channel managers over your own connection (level 2): ServerManager, ServerConnection,
  ClientManager, and what they need of a connection: Link, Stream, CarriedStream, Dialer.
- The node and the store: Bitcoind, AsyncBitcoind, NodeConfig, Network; SQLiteStore,
  PostgresStore, MemoryStore, open_store, ChannelStore; what they hold: ChannelRecord,
  ChannelStatus, Role, ChannelView, ChannelSummary, Generation, PaymentLogEntry, Transaction.
- Policies: ServerPolicy, ClientPolicy, WatchPolicy, FeePolicy, PeerLimits.
- Events and callbacks: ChannelOpened, PaymentReceived, PaymentAcknowledged, ChannelClosed,
  PeerError, ClosingSeen, ChannelFinished; ServerEvent, ClientEvent, PaymentHandler,
  EventHandler (a server's on_event), ClientEventHandler (a client's).
- Errors: every class of `bitcoind_paychan.errors` (PaychanError and below).

The state machines (level 1) are the public subpackage `bitcoind_paychan.channel`
(ServerChannel, ClientChannel and their effects, `bitcoind_paychan.channel.effects`). Every
other module, and any name starting with `_`, is private: it may change in any release.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from bitcoind_paychan.errors import (
    ChannelExists,
    ChannelFailed,
    ChannelGone,
    ConfigError,
    ControlError,
    CreditLost,
    DecodeError,
    ErrorCode,
    InsufficientFunds,
    InvalidContribution,
    InvalidParameter,
    LeaseLost,
    LocalProtocolError,
    MusigError,
    NodeAuthError,
    NodeError,
    NodeUnreachable,
    NonceReused,
    NotStarted,
    PaidHttpError,
    PaychanError,
    PaymentTimeout,
    PolicyError,
    PriceRefused,
    ProtocolError,
    ProxyHeaderError,
    ReanchorRefused,
    RemoteProtocolError,
    RpcError,
    SettlementDecided,
    StoreError,
    SystemChangeRefused,
    TLSError,
    TransactionRejected,
    UpstreamFailed,
    WalletNotLoaded,
    WrongNetwork,
)

if TYPE_CHECKING:
    from bitcoind_paychan.bitcoin.network import Network
    from bitcoind_paychan.bitcoin.tx import Transaction
    from bitcoind_paychan.channel.client import ClientPolicy
    from bitcoind_paychan.channel.effects import (
        ChannelClosed,
        ChannelFinished,
        ChannelOpened,
        ClosingSeen,
        PaymentAcknowledged,
        PaymentReceived,
        PeerError,
    )
    from bitcoind_paychan.channel.fees import FeePolicy
    from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
    from bitcoind_paychan.channel.server import ServerPolicy
    from bitcoind_paychan.channel.watch import WatchPolicy
    from bitcoind_paychan.node import AsyncBitcoind, Bitcoind, NodeConfig
    from bitcoind_paychan.service.client import (
        Channel,
        ClientEvent,
        ClientEventHandler,
        ClientManager,
        Dialer,
        PaymentClient,
    )
    from bitcoind_paychan.service.server import (
        EventHandler,
        PaymentHandler,
        PaymentServer,
        ServerConnection,
        ServerEvent,
        ServerManager,
    )
    from bitcoind_paychan.service.watcher import ChannelView
    from bitcoind_paychan.store import (
        ChannelStore,
        ChannelSummary,
        Generation,
        MemoryStore,
        PaymentLogEntry,
        PostgresStore,
        SQLiteStore,
        open_store,
    )
    from bitcoind_paychan.transport import CarriedStream, Link, Stream
    from bitcoind_paychan.transport.limits import PeerLimits
    from bitcoind_paychan.transport.tls import ClientTLS, ServerTLS

__version__ = "0.1.0"
__all__ = [
    "AsyncBitcoind", "Bitcoind", "CarriedStream", "Channel", "ChannelClosed", "ChannelExists",
    "ChannelFailed", "ChannelFinished", "ChannelGone", "ChannelOpened", "ChannelRecord",
    "ChannelStatus", "ChannelStore", "ChannelSummary", "ChannelView", "ClientEvent",
    "ClientEventHandler", "ClientManager", "ClientPolicy", "ClientTLS", "ClosingSeen",
    "ConfigError", "ControlError", "CreditLost", "DecodeError", "Dialer", "ErrorCode",
    "EventHandler",
    "FeePolicy", "Generation", "InsufficientFunds", "InvalidContribution", "InvalidParameter",
    "LeaseLost",
    "Link", "LocalProtocolError", "MemoryStore", "MusigError", "Network", "NodeAuthError",
    "NodeConfig", "NodeError", "NodeUnreachable", "NonceReused", "NotStarted", "PaidHttpError",
    "PaychanError",
    "PaymentAcknowledged", "PaymentClient", "PaymentHandler", "PaymentLogEntry",
    "PaymentReceived", "PaymentServer", "PaymentTimeout", "PeerError", "PeerLimits",
    "PolicyError", "PostgresStore", "PriceRefused", "ProtocolError", "ProxyHeaderError",
    "ReanchorRefused",
    "RemoteProtocolError",
    "Role", "RpcError", "SQLiteStore", "ServerConnection", "ServerEvent", "ServerManager",
    "ServerPolicy", "ServerTLS", "SettlementDecided", "StoreError", "Stream",
    "SystemChangeRefused", "TLSError", "Transaction", "TransactionRejected", "UpstreamFailed",
    "WalletNotLoaded",
    "WatchPolicy", "WrongNetwork", "open_store",
]

# Every other export is imported on first use (PEP 562), so that importing the package, or the
# pure core under it (`channel`, `bitcoin`, `wire`), loads no asyncio, socket, TLS, database,
# RPC or scheduler: tests/test_imports.py holds it. Each module below and its names:
_HOMES = {
    ".bitcoin.network": "Network",
    ".bitcoin.tx": "Transaction",
    ".channel.client": "ClientPolicy",
    ".channel.effects": "ChannelClosed ChannelFinished ChannelOpened ClosingSeen "
                        "PaymentAcknowledged PaymentReceived PeerError",
    ".channel.fees": "FeePolicy",
    ".channel.records": "ChannelRecord ChannelStatus Role",
    ".channel.server": "ServerPolicy",
    ".channel.watch": "WatchPolicy",
    ".node": "AsyncBitcoind Bitcoind NodeConfig",
    ".service.client": "Channel ClientEvent ClientEventHandler ClientManager Dialer PaymentClient",
    ".service.server": "EventHandler PaymentHandler PaymentServer ServerConnection ServerEvent "
                       "ServerManager",
    ".service.watcher": "ChannelView",
    ".store": "ChannelStore ChannelSummary Generation MemoryStore PaymentLogEntry PostgresStore "
              "SQLiteStore open_store",
    ".transport": "CarriedStream Link Stream",
    ".transport.limits": "PeerLimits",
    ".transport.tls": "ClientTLS ServerTLS",
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names.split()}


if not TYPE_CHECKING:  # hidden from type checkers, so that a misspelt name stays an error

    def __getattr__(name: str) -> object:
        """Import a lazy export's module on first use and keep the name here."""
        module = _MODULE_OF.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
