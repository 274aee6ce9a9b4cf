"""A modelled chain: blocks, a mempool, reorgs and the clock, with spends of a channel's
contract checked by the project's own sighash and key code (no script interpreter, no node):
the rules are `regtest.chainrules` (each contract's kind reads the spend back and checks its
signatures), which `regtest.memchain`, the service tests' chain, checks too.

Coins that no modelled transaction created are wallet coins: they exist until spent.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field

from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxOut
from bitcoind_paychan.channel.contract import Contract
from regtest.chainrules import ANY_HEIGHT, is_final, spend_problem

START_TIME = 1_700_000_000
_ids = itertools.count(1)


@dataclass
class Block:
    height: int
    time: int
    txs: list[Transaction]
    id: int = field(default_factory=lambda: next(_ids))


class Chain:
    """One chain and one mempool, shared by both sides' nodes."""

    def __init__(self) -> None:
        self.blocks = [Block(h, START_TIME - 600 * (11 - h), []) for h in range(12)]
        self.mempool: list[Transaction] = []
        self.contracts: dict[bytes, Contract] = {}  # contract txid (raw) → contract
        self.coins: dict[OutPoint, TxOut] = {}  # wallet coins whose outputs the model made
        self.fee_rate = 1000

    # -- views ---------------------------------------------------------------------------

    @property
    def tip(self) -> Block:
        return self.blocks[-1]

    @property
    def median_time(self) -> int:
        return int(statistics.median_low(b.time for b in self.blocks[-11:]))

    def confirmed(self) -> dict[bytes, tuple[Transaction, int]]:
        return {tx.txid: (tx, b.height) for b in self.blocks for tx in b.txs}

    def spent(self, txs: list[Transaction]) -> dict[OutPoint, Transaction]:
        return {txin.prevout: tx for tx in txs for txin in tx.inputs}

    def chain_txs(self) -> list[Transaction]:
        return [tx for b in self.blocks for tx in b.txs]

    def spender(self, outpoint: OutPoint) -> tuple[Transaction, int] | None:
        """The confirmed spender of `outpoint` and its height, if any."""
        for block in self.blocks:
            for tx in block.txs:
                if any(txin.prevout == outpoint for txin in tx.inputs):
                    return tx, block.height
        return None

    def mempool_spender(self, outpoint: OutPoint) -> Transaction | None:
        return next((tx for tx in self.mempool
                     if any(txin.prevout == outpoint for txin in tx.inputs)), None)

    def depth(self, height: int) -> int:
        return self.tip.height - height + 1

    # -- validity -------------------------------------------------------------------------

    def problem(self, tx: Transaction, base: list[Transaction], median_time: int) -> str | None:
        """Why `tx` cannot follow `base` (the txs before it); None if it can."""
        created = {t.txid: t for t in base}
        spent = self.spent(base)
        known = ({t.txid for t in self.chain_txs()} | {t.txid for t in self.mempool}
                 | set(created) | set(self.contracts))
        for txin in tx.inputs:
            if txin.prevout in spent:
                return (f"bad-txns-inputs-missingorspent: {txin.prevout.txid_hex}:"
                        f"{txin.prevout.index} is spent")
            if txin.prevout.txid in known and txin.prevout.txid not in created:
                return f"input {txin.prevout.txid_hex} is not available yet"
        contract = self.contracts.get(tx.inputs[0].prevout.txid) if tx.inputs else None
        if contract is not None and tx.inputs[0].prevout == contract.outpoint:
            return spend_problem(contract, tx, median_time, spent=self.spent_outputs(tx))
        return None if is_final(tx, ANY_HEIGHT, median_time) else "non-final"

    def spent_outputs(self, tx: Transaction) -> tuple[TxOut, ...]:
        """The outputs `tx`'s inputs after the first spend, where the model knows them all
        (a v4 re-anchor's signatures commit to them); () otherwise."""
        made = {t.txid: t for t in self.chain_txs() + self.mempool}
        outputs = []
        for txin in tx.inputs[1:]:
            parent = made.get(txin.prevout.txid)
            if parent is not None and txin.prevout.index < len(parent.outputs):
                outputs.append(parent.outputs[txin.prevout.index])
            elif txin.prevout in self.coins:
                outputs.append(self.coins[txin.prevout])
            else:
                return ()
        return tuple(outputs)

    def fee(self, tx: Transaction) -> int:
        """What `tx` pays in fees, if the model knows every coin it spends (else 0)."""
        contract = self.contracts.get(tx.inputs[0].prevout.txid)
        if contract is None or tx.inputs[0].prevout != contract.outpoint:
            return 0
        others = self.spent_outputs(tx)
        if len(others) != len(tx.inputs) - 1:
            return 0
        return contract.value + sum(o.value for o in others) - sum(o.value for o in tx.outputs)

    # -- the node's answers ----------------------------------------------------------------

    def accept(self, tx: Transaction) -> str | None:
        """Take `tx` into the mempool (replacing a cheaper conflict); why not, or None."""
        problem, mempool = self._acceptance(tx)
        self.mempool = mempool
        return problem

    def test_accept(self, tx: Transaction) -> str | None:
        """Why the mempool would not take `tx` now (None: it would)."""
        return self._acceptance(tx)[0]

    def _acceptance(self, tx: Transaction) -> tuple[str | None, list[Transaction]]:
        if any(t.txid == tx.txid for t in self.mempool + self.chain_txs()):
            return None, self.mempool  # already known: a node answers as if accepted
        conflicts = [t for t in self.mempool
                     if {i.prevout for i in t.inputs} & {i.prevout for i in tx.inputs}]
        if any(self.fee(tx) <= self.fee(c) for c in conflicts):
            return "txn-mempool-conflict", self.mempool
        pool = self._closure([t for t in self.mempool if t not in conflicts])
        problem = self.problem(tx, self.chain_txs() + pool, self.median_time)
        return (problem, self.mempool) if problem else (None, [*pool, tx])

    def _closure(self, pool: list[Transaction]) -> list[Transaction]:
        """`pool` without the transactions whose inputs are gone (descendants of evicted or
        conflicted ones); lock times are left to mining."""
        kept: list[Transaction] = []
        base = self.chain_txs()
        for tx in pool:
            if self.problem(tx, base + kept, 2**32) is None:
                kept.append(tx)
        return kept

    def mine(self, step: int, include: bool, extra: list[Transaction] | None = None) -> Block:
        """A new block `step` seconds after the tip with `extra` first, then (if `include`)
        what of the mempool fits."""
        base = self.chain_txs()
        txs: list[Transaction] = []
        for tx in [*(extra or []), *(self.mempool if include else [])]:
            if self.problem(tx, base + txs, self.median_time) is None:
                txs.append(tx)
        block = Block(self.tip.height + 1, self.tip.time + step, txs)
        self.blocks.append(block)
        mined = {t.txid for t in txs}
        self.mempool = self._closure([t for t in self.mempool if t.txid not in mined])
        return block

    def disconnect(self, count: int) -> list[Block]:
        """Take the top `count` blocks off; their transactions go back to the mempool."""
        gone = self.blocks[-count:]
        del self.blocks[-count:]
        self.mempool = self._closure([tx for b in gone for tx in b.txs] + self.mempool)
        return gone
