"""A node of a `MemChain` with a `MemWallet`: the node adapter's async face (what the services
ask of `AsyncBitcoind`: tip, fee rate, fund, sign, broadcast, look up, watch keys), answered in
process and at once. Its `node` is what the watcher and `BlockMonitor` reach through today
(`rpc.call` for block hashes, headers and raw blocks, `spenders`, `config.chain`).

Set `down` to make every call fail as an unreachable node does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxOut
from bitcoind_paychan.errors import NodeError, NodeUnreachable, TransactionRejected
from bitcoind_paychan.node.bitcoind import ALREADY_KNOWN, Acceptance, ChainTip, FundedTx, TxStatus
from regtest.memchain import MemChain
from regtest.memwallet import MemWallet

T = TypeVar("T")


@dataclass(frozen=True)
class MemConfig:
    """The part of NodeConfig the services read."""

    chain: str = "regtest"
    url: str = "memchain://"
    wallet: str | None = "memwallet"


class MemNode:
    """One side's node and wallet on a shared `MemChain`."""

    def __init__(self, chain: MemChain, wallet: MemWallet | None = None,
                 network: Network = Network.REGTEST) -> None:
        self.chain = chain
        self.wallet = wallet or MemWallet(chain, network)
        self.network = network
        self.down = False
        self.broadcasts: list[Transaction] = []  # every transaction it was asked to send
        self.node = SyncFace(self)

    def _up(self) -> None:
        if self.down:
            raise NodeUnreachable("cannot reach bitcoind at memchain:// (the test took it down)")

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)`, at once (nothing here waits)."""
        self._up()
        return call(*args)

    async def tip(self) -> ChainTip:
        self._up()
        with self.chain.lock:
            tip = self.chain.tip
            return ChainTip(tip.height, tip.hash, self.chain.median_time(), tip.time)

    async def fee_rate(self, target_blocks: int = 6, floor: int = 1000) -> int:
        self._up()
        return max(floor, self.chain.min_relay_fee, self.chain.estimate or 0)

    async def fund(self, script_pubkey: bytes, amount: int, fee_rate: int | None = None,
                   version: int = 2) -> FundedTx:
        self._up()
        draft = Transaction(version, (), (TxOut(amount, script_pubkey),), 0)
        with self.chain.lock:
            tx = self.wallet.fund(draft, fee_rate)
            fee = self.chain.fee(tx)
        return FundedTx(tx, 0, fee, tuple((i.prevout.txid_hex, i.prevout.index)
                                          for i in tx.inputs))

    async def fund_external(self, draft: Transaction, input_weights: dict[tuple[str, int], int],
                            fee_rate: int) -> Transaction:
        self._up()
        external = {}
        with self.chain.lock:
            for (txid, index), weight in input_weights.items():
                outpoint = OutPoint.from_hex(txid, index)
                spent = self.chain.output(outpoint)
                if spent is None:
                    raise NodeError(f"the wallet cannot find input {txid}:{index}")
                external[outpoint] = (spent, weight)
            return self.wallet.fund(draft, fee_rate, external)

    async def release(self, inputs: tuple[tuple[str, int], ...]) -> None:
        self._up()
        self.wallet.release(inputs)

    async def broadcast(self, tx: Transaction) -> str:
        self._up()
        self.broadcasts.append(tx)
        problem = self.chain.accept(tx)
        if problem:
            raise rejected(tx, problem)
        with self.chain.lock:
            self.wallet.locked -= {txin.prevout for txin in tx.inputs}
        return tx.txid_hex

    async def test_accept(self, tx: Transaction) -> Acceptance:
        self._up()
        with self.chain.lock:
            problem = self.chain.test_accept(tx)
            if problem:
                return Acceptance(False, problem)
            return Acceptance(True, "", tx.vsize, self.chain.fee(tx))

    async def check_acceptable(self, tx: Transaction) -> Acceptance:
        acceptance = await self.test_accept(tx)
        if not acceptance.allowed and acceptance.reason not in ALREADY_KNOWN:
            raise rejected(tx, acceptance.reason)
        return acceptance

    async def transaction(self, txid: str) -> TxStatus | None:
        self._up()
        with self.chain.lock:
            found = self.chain.transaction(OutPoint.from_hex(txid, 0).txid)
            if found is None:
                return None
            tx, height = found
            if height is None:
                return TxStatus(tx, 0, None, None)
            return TxStatus(tx, self.chain.height - height + 1, self.chain.blocks[height].hash,
                            height)

    async def is_spent(self, txid: str, index: int) -> bool:
        self._up()
        outpoint = OutPoint.from_hex(txid, index)
        with self.chain.lock:
            if self.chain.output(outpoint) is not None:
                return False
            if self.chain.transaction(outpoint.txid) is None:
                raise NodeError(f"bitcoind does not know transaction {txid}")
            return True

    async def payout_script(self) -> bytes:
        self._up()
        return self.wallet.new_script()

    async def spender(self, txid: str, index: int) -> Transaction | None:
        self._up()
        return self.node.spenders([(txid, index)]).get((txid, index))

    async def watch_key(self, secret_wif: str, script_types: tuple[str, ...] = ("pkh", "wpkh")
                        ) -> None:
        self._up()
        self.wallet.watch_key(PrivateKey.from_wif(secret_wif, self.network), script_types)


def rejected(tx: Transaction, reason: str) -> TransactionRejected:
    return TransactionRejected(f"bitcoind rejected transaction {tx.txid_hex}: {reason}", reason)


class SyncFace:
    """What the watcher and `BlockMonitor` use of the synchronous `Bitcoind` (until the
    services take node ports): `rpc.call` for the chain's blocks, `spenders`, `config`."""

    def __init__(self, node: MemNode) -> None:
        self._node = node
        self.config = MemConfig()
        self.rpc = self

    def spenders(self, outpoints: Iterable[tuple[str, int]]) -> dict[tuple[str, int], Transaction]:
        """The mempool transactions spending any of these outpoints (txid, index)."""
        self._node._up()
        found = {}
        for txid, index in outpoints:
            tx = self._node.chain.mempool_spender(OutPoint.from_hex(txid, index))
            if tx is not None:
                found[(txid, index)] = tx
        return found

    def call(self, method: str, *params: Any, wallet: bool = False) -> Any:
        """The few RPC methods the block monitor and the watcher call."""
        self._node._up()
        chain = self._node.chain
        with chain.lock:
            if method == "getbestblockhash":
                return chain.tip.hash
            block = chain.block(str(params[0])) if params else None
            if block is None:
                raise NodeError(f"memchain: {method}{params} is not answered here")
            if method == "getblockheader":
                return {"height": block.height, "hash": block.hash, "time": block.time,
                        "previousblockhash": block.prev_hash,
                        "mediantime": block.median_time}
            if method == "getblock" and params[1:] == (0,):
                return block.raw().hex()
            raise NodeError(f"memchain: {method}{params} is not answered here")
