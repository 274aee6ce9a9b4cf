"""A deterministic in-process chain for tests and benchmarks: blocks, a mempool with the
node's acceptance checks, reorgs, a clock and a fee estimate you set. No node, no threads of
its own; safe to share between threads (one lock).

Acceptance follows bitcoind where the services look: a known transaction counts as accepted;
a spend of a spent or unknown output is `bad-txns-inputs-missingorspent`; a conflict with the
mempool replaces it only for a higher fee and fee rate (full RBF; else `txn-mempool-conflict`);
lock times are final against the next block's height and the tip's median-time-past
(`non-final`); every input's signatures are verified with the project's own code
(`regtest.chainrules`: channel contracts of every version, P2WPKH and P2PKH keys); fees under
the relay minimum, dust and (with `permit_bare_multisig` False, as Knots) bare multisig
outputs are refused. Blocks are serialized as bitcoind's `getblock <hash> 0`.
"""

from __future__ import annotations

import itertools
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from bitcoind_paychan.bitcoin.hashes import hash256
from bitcoind_paychan.bitcoin.script import push_int
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut, encode_varint
from bitcoind_paychan.channel.contract import FINAL

from .chainrules import (
    contract_spent,
    is_final,
    is_taproot,
    key_spend_problem,
    spend_problem,
    taproot_spend_problem,
)

MIN_RELAY_FEE = 1000  # sat/kvB, bitcoind's default -minrelaytxfee
COINBASE_VALUE = 50 * 100_000_000
NULL_OUTPOINT = OutPoint(bytes(32), 0xFFFFFFFF)
MISSING = "bad-txns-inputs-missingorspent"
CONFLICT = "txn-mempool-conflict"
_nonces = itertools.count(1)  # every block is new, even one mined again after a reorg


def dust_limit(script_pubkey: bytes) -> int:
    """bitcoind's dust threshold at 3 sat/vB for an output with this script."""
    witness = script_pubkey[:1] in (b"\x00", b"\x51") and len(script_pubkey) in (22, 34)
    return 294 if len(script_pubkey) == 22 and witness else 330 if witness else 546


@dataclass(frozen=True)
class MemBlock:
    """A block: where it sits, its time and transactions (the first is its coinbase)."""

    height: int
    prev_hash: str
    time: int
    txs: tuple[Transaction, ...]
    median_time: int  # of the last 11 blocks up to this one
    nonce: int = field(default_factory=lambda: next(_nonces))

    @cached_property
    def header(self) -> bytes:
        merkle = hash256(b"".join(tx.txid for tx in self.txs))
        return struct.pack("<i32s32sIII", 4, bytes.fromhex(self.prev_hash)[::-1], merkle,
                           self.time, 0x207FFFFF, self.nonce)

    @cached_property
    def hash(self) -> str:
        return hash256(self.header)[::-1].hex()

    def raw(self) -> bytes:
        """The block as `getblock <hash> 0` returns it (header, then the transactions)."""
        return (self.header + encode_varint(len(self.txs))
                + b"".join(tx.serialize() for tx in self.txs))


@dataclass
class _Undo:
    """What connecting a block changed in the coins, to take it back."""

    spent: dict[OutPoint, TxOut]
    created: list[OutPoint]


class MemChain:
    """One best chain and one mempool. `mocktime` (None: the wall clock) dates new blocks;
    `estimate` is the fee rate (sat/kvB) `estimatesmartfee` answers, None for "no estimate"."""

    def __init__(self, *, mocktime: int | None = None, permit_bare_multisig: bool = True
                 ) -> None:
        self.lock = threading.RLock()
        self.mocktime = mocktime
        self.estimate: int | None = None
        self.min_relay_fee = MIN_RELAY_FEE
        self.permit_bare_multisig = permit_bare_multisig
        self.blocks: list[MemBlock] = []
        self.coins: dict[OutPoint, TxOut] = {}  # the chain's unspent outputs
        self.heights: dict[bytes, int] = {}  # confirmed txid → height
        self.mempool: dict[bytes, Transaction] = {}  # in arrival order
        self.on_block: list[Callable[[MemBlock], None]] = []
        self.on_transaction: list[Callable[[Transaction], None]] = []
        self._undo: list[_Undo] = []
        self._seen: dict[bytes, Transaction] = {}  # every tx ever in a block or the mempool
        self._known: dict[str, MemBlock] = {}  # every block ever mined, by hash
        start = self.now() - 11
        for height in range(11):  # a median-time-past from the start
            self._connect(self._block([], start + height))

    # -- views -----------------------------------------------------------------------------

    def now(self) -> int:
        return self.mocktime if self.mocktime is not None else int(time.time())

    @property
    def tip(self) -> MemBlock:
        return self.blocks[-1]

    @property
    def height(self) -> int:
        return len(self.blocks) - 1

    def median_time(self) -> int:
        """The tip's median-time-past."""
        return self.tip.median_time

    def block(self, block_hash: str) -> MemBlock | None:
        """A block by hash: of the best chain, or one a reorg took off it."""
        with self.lock:
            return self._known.get(block_hash)

    def transaction(self, txid: bytes) -> tuple[Transaction, int | None] | None:
        """A transaction of the chain (with its height) or the mempool (height None)."""
        with self.lock:
            if txid in self.mempool:
                return self.mempool[txid], None
            if txid in self.heights:
                return self._seen[txid], self.heights[txid]
            return None

    def output(self, outpoint: OutPoint) -> TxOut | None:
        """The output if it exists unspent, in the chain or the mempool (spends in the
        mempool count: as `gettxout` with the mempool)."""
        with self.lock:
            if outpoint in self._mempool_spent():
                return None
            if outpoint in self.coins:
                return self.coins[outpoint]
            tx = self.mempool.get(outpoint.txid)
            return tx.outputs[outpoint.index] if tx and outpoint.index < len(tx.outputs) \
                else None

    def mempool_spender(self, outpoint: OutPoint) -> Transaction | None:
        with self.lock:
            txid = self._mempool_spent().get(outpoint)
            return None if txid is None else self.mempool[txid]

    def fee(self, tx: Transaction) -> int:
        """What `tx` pays in fees (its inputs must be known to the chain or the mempool)."""
        with self.lock:
            spent = [self.prevout(i.prevout) for i in tx.inputs]
            if None in spent:
                raise ValueError(f"an input of {tx.txid_hex} is unknown")
            return sum(o.value for o in spent if o) - sum(o.value for o in tx.outputs)

    # -- the mempool -----------------------------------------------------------------------

    def test_accept(self, tx: Transaction) -> str | None:
        """Why the mempool would refuse `tx` now (None: it would take it)."""
        with self.lock:
            return self._acceptance(tx)[0]

    def accept(self, tx: Transaction) -> str | None:
        """Take `tx` into the mempool (evicting what it replaces); why not, or None."""
        with self.lock:
            problem, evicted = self._acceptance(tx)
            if problem is None and tx.txid not in self.mempool and tx.txid not in self.heights:
                for txid in evicted:
                    self.mempool.pop(txid, None)
                self.mempool[tx.txid] = tx
                self._seen[tx.txid] = tx
                for listener in self.on_transaction:
                    listener(tx)
            return problem

    def evict(self, txid: bytes) -> None:
        """Drop `txid` and its descendants from the mempool (as an expiry or a restart)."""
        with self.lock:
            for gone in self._descendants({txid}):
                self.mempool.pop(gone, None)

    def _acceptance(self, tx: Transaction) -> tuple[str | None, set[bytes]]:
        if tx.txid in self.mempool or tx.txid in self.heights:
            return None, set()
        if not tx.inputs or any(i.prevout == NULL_OUTPOINT for i in tx.inputs):
            return "coinbase", set()
        spent = self._mempool_spent()
        conflicts = {spent[i.prevout] for i in tx.inputs if i.prevout in spent}
        evicted = self._descendants(conflicts)
        for txin in tx.inputs:
            if txin.prevout.txid in evicted or self.prevout(txin.prevout) is None:
                return MISSING, set()
        fee = self.fee(tx)
        problem = (self.policy_problem(tx, fee)
                   or self.consensus_problem(tx, self.height + 1, self.median_time()))
        if problem:
            return problem, set()
        if conflicts:
            replaced = sum(self.fee(self.mempool[t]) for t in evicted)
            old_rate = max(self.fee(self.mempool[t]) * 1000 // self.mempool[t].vsize
                           for t in conflicts)
            if fee <= replaced or fee * 1000 // tx.vsize <= old_rate:
                return CONFLICT, set()
        return None, evicted

    def policy_problem(self, tx: Transaction, fee: int) -> str | None:
        """What the node's relay policy (not consensus) refuses in `tx`."""
        if fee < 0:
            return "bad-txns-in-belowout"
        if fee * 1000 < self.min_relay_fee * tx.vsize:
            return f"min relay fee not met, {fee} < {-(-self.min_relay_fee * tx.vsize // 1000)}"
        for out in tx.outputs:
            if out.value < dust_limit(out.script_pubkey):
                return "dust"
            if not self.permit_bare_multisig and out.script_pubkey[-1:] == b"\xae":
                return "bare-multisig"
        return None

    def consensus_problem(self, tx: Transaction, height: int, median_time: int,
                          lookup: Callable[[OutPoint], TxOut | None] | None = None
                          ) -> str | None:
        """Why `tx` (its inputs available through `lookup`, by default the chain's coins
        and the mempool) cannot be in a block at `height` after a block whose
        median-time-past is `median_time`: lock time or a spend that fails."""
        if not is_final(tx, height, median_time):
            return "non-final"
        outputs = [(lookup or self.prevout)(txin.prevout) for txin in tx.inputs]
        every = [out for out in outputs if out is not None]
        assert len(every) == len(outputs)
        for index, (txin, spent) in enumerate(zip(tx.inputs, every, strict=True)):
            contract = contract_spent(tx, index, spent, txin.prevout)
            if is_taproot(spent.script_pubkey):
                problem = taproot_spend_problem(tx, index, every)
            elif contract is not None:
                problem = spend_problem(contract, tx, median_time, height) if index == 0 \
                    else "a channel contract spent in an input other than the first"
            else:
                problem = key_spend_problem(tx, index, spent)
            if problem:
                return f"mandatory-script-verify-flag-failed ({problem})"
        return None

    def prevout(self, outpoint: OutPoint) -> TxOut | None:
        """The output `outpoint` names, if the chain's coins or the mempool hold it (spent in
        the mempool or not)."""
        if outpoint in self.coins:
            return self.coins[outpoint]
        tx = self.mempool.get(outpoint.txid)
        return tx.outputs[outpoint.index] if tx and outpoint.index < len(tx.outputs) else None

    def _mempool_spent(self) -> dict[OutPoint, bytes]:
        return {i.prevout: txid for txid, tx in self.mempool.items() for i in tx.inputs}

    def _descendants(self, txids: set[bytes]) -> set[bytes]:
        found = set(txids)
        for txid, tx in self.mempool.items():  # arrival order: parents come first
            if any(i.prevout.txid in found for i in tx.inputs):
                found.add(txid)
        return found

    # -- blocks ----------------------------------------------------------------------------

    def mine(self, blocks: int = 1, *, txs: Iterable[Transaction] = (), mempool: bool = True,
             payouts: Sequence[TxOut] = (), at: int | None = None) -> list[MemBlock]:
        """Mine `blocks` blocks: the first holds `txs` (checked; ValueError naming the
        problem), then (with `mempool`) every mempool transaction valid by then. Blocks are
        dated `at`, the clock, or a second after the tip's median-time-past, whichever is
        latest. The first's coinbase pays `payouts` (by default an anyone-can-spend output)."""
        mined = []
        with self.lock:
            extra = list(txs)
            for _ in range(blocks):
                height = self.height + 1
                chosen = self._select(extra, height)
                if len(chosen) < len(extra):
                    left = next(t for t in extra if t not in chosen)
                    raise ValueError(f"{left.txid_hex} cannot be mined: "
                                     f"{self._block_problem(left, chosen, height)}")
                if mempool:
                    chosen = self._select([*chosen, *self.mempool.values()], height)
                coinbase = Transaction(2, (TxIn(NULL_OUTPOINT, push_int(height) + b"\x00",
                                                FINAL),),
                                       tuple(payouts) or (TxOut(COINBASE_VALUE, b"\x51"),), 0)
                stamp = max(at or 0, self.now(), self.median_time() + 1)
                block = self._block([coinbase, *chosen], stamp)
                self._connect(block)
                mined.append(block)
                extra, payouts = [], ()
        for block in mined:
            for listener in self.on_block:
                listener(block)
        return mined

    def _select(self, candidates: list[Transaction], height: int) -> list[Transaction]:
        """The candidates (in order, parents before children) a block at `height` can hold."""
        chosen: list[Transaction] = []
        for tx in candidates:
            if tx not in chosen and self._block_problem(tx, chosen, height) is None:
                chosen.append(tx)
        return chosen

    def _block_problem(self, tx: Transaction, before: list[Transaction], height: int
                       ) -> str | None:
        spent = {i.prevout for t in before for i in t.inputs}
        created = {t.txid: t for t in before}
        if tx.txid in self.heights:
            return "already in the chain"
        for txin in tx.inputs:
            parent = created.get(txin.prevout.txid)
            if txin.prevout in spent or (txin.prevout not in self.coins and (
                    parent is None or txin.prevout.index >= len(parent.outputs))):
                return MISSING
        def lookup(outpoint: OutPoint) -> TxOut | None:
            parent = created.get(outpoint.txid)
            return parent.outputs[outpoint.index] if parent else self.coins.get(outpoint)

        return self.consensus_problem(tx, height, self.median_time(), lookup)

    def _block(self, txs: list[Transaction], stamp: int) -> MemBlock:
        prev = self.tip.hash if self.blocks else "00" * 32
        median = statistics.median_low([*(b.time for b in self.blocks[-10:]), stamp])
        block = MemBlock(len(self.blocks), prev, stamp, tuple(txs), int(median))
        self._known[block.hash] = block
        return block

    def _connect(self, block: MemBlock) -> None:
        undo = _Undo({}, [])
        for tx in block.txs:
            for txin in tx.inputs:
                if txin.prevout in self.coins:
                    undo.spent[txin.prevout] = self.coins.pop(txin.prevout)
            for index, out in enumerate(tx.outputs):
                self.coins[OutPoint(tx.txid, index)] = out
                undo.created.append(OutPoint(tx.txid, index))
            self.heights[tx.txid] = block.height
            self._seen[tx.txid] = tx
        self.blocks.append(block)
        self._undo.append(undo)
        for tx in block.txs:
            self.mempool.pop(tx.txid, None)
        spent = {i.prevout for tx in block.txs for i in tx.inputs}
        conflicted = {txid for txid, tx in self.mempool.items()
                      if any(i.prevout in spent for i in tx.inputs)}
        for txid in self._descendants(conflicted):  # double-spent by the block, and children
            self.mempool.pop(txid, None)

    def disconnect(self, count: int = 1) -> list[MemBlock]:
        """Take the top `count` blocks off (as `invalidateblock`); their transactions go back
        to the mempool where they are still valid, before what it held."""
        with self.lock:
            gone: list[MemBlock] = []
            for _ in range(count):
                block, undo = self.blocks.pop(), self._undo.pop()
                for outpoint in undo.created:
                    self.coins.pop(outpoint, None)
                self.coins.update(undo.spent)
                for tx in block.txs:
                    self.heights.pop(tx.txid, None)
                gone.insert(0, block)
            pool, self.mempool = list(self.mempool.values()), {}
            for tx in [t for b in gone for t in b.txs[1:]] + pool:
                self.accept(tx)
        return gone

    def reorg(self, depth: int, blocks: int | None = None, *, mempool: bool = False,
              txs: Iterable[Transaction] = ()) -> list[MemBlock]:
        """Replace the top `depth` blocks by `blocks` new ones (default depth + 1, so the new
        branch is longer), the first holding `txs`; with `mempool` they also take what the
        old ones held."""
        with self.lock:
            self.disconnect(depth)
            return self.mine(depth + 1 if blocks is None else blocks, txs=txs, mempool=mempool)

    def advance_median_time_past(self, past: int) -> None:
        """Move the clock past `past` and mine 11 blocks, so the median-time-past is > it
        (as regtest.node.RegtestNode's)."""
        with self.lock:
            start = max(past + 1, self.median_time() + 1)
            for step in range(11):
                self.mocktime = start + step
                self.mine()
