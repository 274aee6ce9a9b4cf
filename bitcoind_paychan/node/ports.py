"""What the services use of a node, as small interfaces (ports), after LDK's ChainSource,
BroadcasterInterface, FeeEstimator and wallet traits.

`AsyncBitcoind` implements them all; anything else that does (a test's in-process chain, a
broadcaster that wraps another) can stand in for it. The services (`service/`) take these
ports and never reach into a node: only `node/` speaks RPC. `NodePorts` bundles the four a
channel manager needs; `NodePorts.of(node)` takes them from one object that implements all
(`Node`), each replaceable on its own.

The value types (`ChainTip`, `Block`, `TxStatus`, `FundedTx`, `Acceptance`) are in
`node/bitcoind.py`; importing this module loads no RPC client.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bitcoind_paychan.bitcoin.tx import Transaction
    from bitcoind_paychan.node.bitcoind import Acceptance, Block, ChainTip, FundedTx, TxStatus

Outpoint = tuple[str, int]
"""(txid, output index)"""


class ChainSource(Protocol):
    """The best chain and the mempool, as one node sees them."""

    @property
    def chain(self) -> str:
        """Which chain: "main", "test", "testnet4", "signet" or "regtest"."""

    async def tip(self) -> ChainTip:
        """The best block: height, hash, median-time-past and block time."""

    async def best_block_hash(self) -> str:
        """The best block's hash (cheaper than `tip`)."""

    async def block_header(self, block_hash: str) -> Block:
        """A block's header (height, parent, times); NodeError if unknown."""

    async def raw_block(self, block_hash: str) -> bytes:
        """A block, serialized; NodeError if unknown or pruned."""

    async def transaction(self, txid: str) -> TxStatus | None:
        """A transaction in the mempool or chain, with its confirmations; None if unknown."""

    async def is_spent(self, txid: str, index: int) -> bool:
        """Is outpoint txid:index spent (in the chain or the mempool)? NodeError if the
        transaction is unknown."""

    async def spender(self, txid: str, index: int) -> Transaction | None:
        """The mempool transaction spending txid:index, if there is one."""

    async def spenders(self, outpoints: Iterable[Outpoint]) -> dict[Outpoint, Transaction]:
        """The mempool transactions spending any of these outpoints."""


class Broadcaster(Protocol):
    """Hands transactions to the network."""

    async def broadcast(self, tx: Transaction) -> str:
        """Send `tx`; one already in the mempool or chain counts as sent. Its txid;
        TransactionRejected with the node's reason if refused."""

    async def test_accept(self, tx: Transaction) -> Acceptance:
        """Would the mempool take `tx`? (never raises for a refusal)"""

    async def check_acceptable(self, tx: Transaction) -> Acceptance:
        """`test_accept` as typed errors: TransactionRejected when refused (one already held
        counts as accepted)."""


class FeeEstimator(Protocol):
    """What a transaction built now should pay."""

    async def fee_rate(self, target_blocks: int = 6, floor: int = 1000) -> int:
        """Sat/kvB for confirmation within `target_blocks`, never below `floor` nor what
        the mempool takes."""


class Wallet(Protocol):
    """Our coins and keys."""

    async def fund(self, script_pubkey: bytes, amount: int, fee_rate: int | None = None,
                   version: int = 2) -> FundedTx:
        """A signed, unbroadcast tx paying `amount` to `script_pubkey` as output 0 from
        segwit coins, which stay locked until broadcast or `release`."""

    async def fund_external(self, draft: Transaction, input_weights: dict[Outpoint, int],
                            fee_rate: int) -> Transaction:
        """`draft` plus our inputs (signed) and change, paying the whole fee at `fee_rate`;
        the draft's own inputs (not ours) stay unsigned and keep their places."""

    async def release(self, inputs: tuple[Outpoint, ...]) -> None:
        """Unlock coins a funding tx, now abandoned, had reserved."""

    async def reclaim(self, coin: Outpoint, fee_rate: int) -> Transaction:
        """A signed, unbroadcast tx spending our confirmed `coin` (locked or not) whole to a
        fresh script of ours at `fee_rate` sat/kvB (BIP125 replaceable): what kills a signed
        transaction that spends it."""

    async def payout_script(self) -> bytes:
        """A fresh scriptPubKey of ours for receiving money."""

    async def owns_script(self, script_pubkey: bytes) -> bool:
        """Is money paid to `script_pubkey` ours (the wallet's `ismine`)? False for a script
        with no address."""

    async def watch_key(self, secret_wif: str, script_types: tuple[str, ...] = ("pkh", "wpkh")
                        ) -> None:
        """Make a channel key ours: what is paid to it (refunds, change) is our money."""


class Miner(Protocol):
    """Regtest only: blocks on demand."""

    async def mine(self, tx: Transaction) -> bool:
        """Mine `tx` in a block of its own, unless the chain or the mempool already holds it
        (another miner raced us): True if we mined it."""


class Node(ChainSource, Broadcaster, FeeEstimator, Wallet, Protocol):
    """All four ports in one object, as one bitcoind gives them (`AsyncBitcoind`)."""


@dataclass(frozen=True)
class NodePorts:
    """The ports a channel manager works with: its chain, broadcaster, fee estimator, wallet."""

    chain: ChainSource
    broadcaster: Broadcaster
    fees: FeeEstimator
    wallet: Wallet

    @classmethod
    def of(cls, node: Node | NodePorts, *, chain: ChainSource | None = None,
           broadcaster: Broadcaster | None = None, fees: FeeEstimator | None = None,
           wallet: Wallet | None = None) -> NodePorts:
        """The ports of one node (or a bundle), any of them replaced by the one given."""
        base = node if isinstance(node, NodePorts) else cls(node, node, node, node)
        return cls(chain or base.chain, broadcaster or base.broadcaster, fees or base.fees,
                   wallet or base.wallet)


def minimum_confirmations(chain: str) -> int:
    """The confirmations a contract needs before payments after the first, unless the
    operator says: none on regtest (blocks only come when asked for), one elsewhere."""
    return 0 if chain == "regtest" else 1
