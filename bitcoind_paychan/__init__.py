"""bitcoind-paychan: unidirectional (Spilman) payment channels beside a bitcoind."""

from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.channel.client import ClientPolicy
from bitcoind_paychan.channel.fees import FeePolicy
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.channel.watch import WatchPolicy
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind, NodeConfig
from bitcoind_paychan.service.client import Channel, ClientManager, PaymentClient
from bitcoind_paychan.service.limits import PeerLimits
from bitcoind_paychan.service.server import PaymentServer, ServerConnection, ServerManager
from bitcoind_paychan.store import SQLiteStore
from bitcoind_paychan.transport import CarriedStream, Link, Stream

__version__ = "0.1.0"
__all__ = ["AsyncBitcoind", "Bitcoind", "CarriedStream", "Channel", "ClientManager",
           "ClientPolicy", "FeePolicy", "Link", "Network", "NodeConfig", "PaymentClient",
           "PaymentServer", "PeerLimits", "SQLiteStore", "ServerConnection", "ServerManager",
           "ServerPolicy", "Stream", "WatchPolicy"]
