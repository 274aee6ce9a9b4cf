"""The node adapter: bitcoind over JSON-RPC (python-bitcoinrpc)."""

from bitcoind_paychan.errors import RpcError
from bitcoind_paychan.node.bitcoind import (
    Acceptance,
    AsyncBitcoind,
    Bitcoind,
    Block,
    ChainTip,
    FundedTx,
    TxStatus,
    to_btc,
    to_sat,
)
from bitcoind_paychan.node.config import CHAINS, NodeConfig
from bitcoind_paychan.node.monitor import BlockMonitor, ChainEvent, ChainTracker
from bitcoind_paychan.node.rpc import RpcClient

__all__ = [
    "CHAINS",
    "Acceptance",
    "AsyncBitcoind",
    "Bitcoind",
    "Block",
    "BlockMonitor",
    "ChainEvent",
    "ChainTip",
    "ChainTracker",
    "FundedTx",
    "NodeConfig",
    "RpcClient",
    "RpcError",
    "TxStatus",
    "to_btc",
    "to_sat",
]
