"""A node of a `MemChain` with a `MemWallet`: the node ports the services use (chain source,
broadcaster, fee estimator, wallet, regtest miner: what `AsyncBitcoind` answers), answered in
process and at once.

Set `down` to make every call fail as an unreachable node does.
"""

from __future__ import annotations

from collections.abc import Iterable

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxOut
from bitcoind_paychan.errors import NodeError, NodeUnreachable, TransactionRejected
from bitcoind_paychan.node.bitcoind import (
    ALREADY_KNOWN,
    Acceptance,
    Block,
    ChainTip,
    FundedTx,
    TxStatus,
)
from bitcoind_paychan.node.ports import Outpoint

from .memchain import MemBlock, MemChain
from .memwallet import MemWallet


class MemNode:
    """One side's node and wallet on a shared `MemChain`."""

    def __init__(self, memchain: MemChain, wallet: MemWallet | None = None,
                 network: Network = Network.REGTEST) -> None:
        self.memchain = memchain
        self.wallet = wallet or MemWallet(memchain, network)
        self.network = network
        self.down = False
        self.broadcasts: list[Transaction] = []  # every transaction it was asked to send

    def _up(self) -> None:
        if self.down:
            raise NodeUnreachable("cannot reach bitcoind at memchain:// (the test took it down)")

    @property
    def chain(self) -> str:
        """Which chain this node follows ("regtest" by default)."""
        return self.network.chain

    async def best_block_hash(self) -> str:
        self._up()
        return self.memchain.tip.hash

    async def block_header(self, block_hash: str) -> Block:
        self._up()
        block = self._block(block_hash)
        return Block(block.height, block.hash, block.prev_hash, block.time, block.median_time)

    async def raw_block(self, block_hash: str) -> bytes:
        self._up()
        return self._block(block_hash).raw()

    def _block(self, block_hash: str) -> MemBlock:
        block = self.memchain.block(block_hash)
        if block is None:
            raise NodeError(f"bitcoind does not know block {block_hash}")
        return block

    async def spenders(self, outpoints: Iterable[Outpoint]) -> dict[Outpoint, Transaction]:
        """The mempool transactions spending any of these outpoints (txid, index)."""
        self._up()
        found = {}
        for txid, index in outpoints:
            tx = self.memchain.mempool_spender(OutPoint.from_hex(txid, index))
            if tx is not None:
                found[(txid, index)] = tx
        return found

    async def mine(self, tx: Transaction) -> bool:
        """Mine `tx` in a block of its own, unless the chain or the mempool holds it."""
        self._up()
        with self.memchain.lock:
            if self.memchain.transaction(tx.txid) is not None:
                return False
            self.memchain.mine(txs=[tx], mempool=False)
            return True

    async def tip(self) -> ChainTip:
        self._up()
        with self.memchain.lock:
            tip = self.memchain.tip
            return ChainTip(tip.height, tip.hash, self.memchain.median_time(), tip.time)

    async def fee_rate(self, target_blocks: int = 6, floor: int = 1000) -> int:
        self._up()
        return max(floor, self.memchain.min_relay_fee, self.memchain.estimate or 0)

    async def fund(self, script_pubkey: bytes, amount: int, fee_rate: int | None = None,
                   version: int = 2) -> FundedTx:
        self._up()
        draft = Transaction(version, (), (TxOut(amount, script_pubkey),), 0)
        with self.memchain.lock:
            tx = self.wallet.fund(draft, fee_rate)
            fee = self.memchain.fee(tx)
        return FundedTx(tx, 0, fee, tuple((i.prevout.txid_hex, i.prevout.index)
                                          for i in tx.inputs))

    async def fund_external(self, draft: Transaction, input_weights: dict[tuple[str, int], int],
                            fee_rate: int) -> Transaction:
        self._up()
        external = {}
        with self.memchain.lock:
            for (txid, index), weight in input_weights.items():
                outpoint = OutPoint.from_hex(txid, index)
                spent = self.memchain.output(outpoint)
                if spent is None:
                    raise NodeError(f"the wallet cannot find input {txid}:{index}")
                external[outpoint] = (spent, weight)
            return self.wallet.fund(draft, fee_rate, external)

    async def release(self, inputs: tuple[tuple[str, int], ...]) -> None:
        self._up()
        self.wallet.release(inputs)

    async def reclaim(self, coin: tuple[str, int], fee_rate: int) -> Transaction:
        self._up()
        outpoint = OutPoint.from_hex(*coin)
        with self.memchain.lock:
            spent = self.memchain.output(outpoint)
            if spent is None:
                raise NodeError(f"coin {coin[0]}:{coin[1]} is spent or unknown")
            return self.wallet.reclaim(outpoint, spent, fee_rate)

    async def broadcast(self, tx: Transaction) -> str:
        self._up()
        self.broadcasts.append(tx)
        problem = self.memchain.accept(tx)
        if problem:
            raise rejected(tx, problem)
        with self.memchain.lock:
            self.wallet.locked -= {txin.prevout for txin in tx.inputs}
        return tx.txid_hex

    async def test_accept(self, tx: Transaction) -> Acceptance:
        self._up()
        with self.memchain.lock:
            problem = self.memchain.test_accept(tx)
            if problem:
                return Acceptance(False, problem)
            return Acceptance(True, "", tx.vsize, self.memchain.fee(tx))

    async def check_acceptable(self, tx: Transaction) -> Acceptance:
        acceptance = await self.test_accept(tx)
        if not acceptance.allowed and acceptance.reason not in ALREADY_KNOWN:
            raise rejected(tx, acceptance.reason)
        return acceptance

    async def transaction(self, txid: str) -> TxStatus | None:
        self._up()
        with self.memchain.lock:
            found = self.memchain.transaction(OutPoint.from_hex(txid, 0).txid)
            if found is None:
                return None
            tx, height = found
            if height is None:
                return TxStatus(tx, 0, None, None)
            depth = self.memchain.height - height + 1
            return TxStatus(tx, depth, self.memchain.blocks[height].hash, height)

    async def is_spent(self, txid: str, index: int) -> bool:
        self._up()
        outpoint = OutPoint.from_hex(txid, index)
        with self.memchain.lock:
            if self.memchain.output(outpoint) is not None:
                return False
            if self.memchain.transaction(outpoint.txid) is None:
                raise NodeError(f"bitcoind does not know transaction {txid}")
            return True

    async def payout_script(self) -> bytes:
        self._up()
        return self.wallet.new_script()

    async def owns_script(self, script_pubkey: bytes) -> bool:
        self._up()
        return script_pubkey in self.wallet.keys

    async def spender(self, txid: str, index: int) -> Transaction | None:
        self._up()
        return (await self.spenders([(txid, index)])).get((txid, index))

    async def watch_key(self, secret_wif: str, script_types: tuple[str, ...] = ("pkh", "wpkh")
                        ) -> None:
        self._up()
        self.wallet.watch_key(PrivateKey.from_wif(secret_wif, self.network), script_types)


def rejected(tx: Transaction, reason: str) -> TransactionRejected:
    return TransactionRejected(f"bitcoind rejected transaction {tx.txid_hex}: {reason}", reason)
