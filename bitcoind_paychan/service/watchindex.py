"""The autopilot's in-memory index of what the chain could change for its channels.

Channels are keyed by their id (generation 0's contract txid, for life). For each watched
(live) channel it holds its current contract's output (a spend of it settles or refunds
the channel), while the contract is unconfirmed its inputs (the contract itself spends them; any
other transaction spending one is a double spend), the wallet inputs of a re-anchor R in
flight (issue 23: another spend of one kills R), and while the channel is OPEN its deadline.
A block is scanned once against the outpoints, so its cost follows the block and the channels
it touches, not the number of channels stored. The index is rebuilt from the store at start
(`ChannelStore.watched`) and kept up to date by the watcher.

It holds no per-channel object the garbage collector tracks (keys are serialized outpoints,
bytes; tuples and dicts of those are untracked), so with 100,000 channels a full collection
is no longer a pause of tens of milliseconds on the event loop. `scan` and `outpoints` may
run in a worker thread while the loop keeps changing the index: they only make single
lookups and copy lists, atomic under the GIL.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, parse_block_transactions


class WatchIndex:
    """Outpoints → channel, the unconfirmed contracts, and the deadlines of open channels."""

    def __init__(self) -> None:
        self._outpoints: dict[bytes, str] = {}  # watched outpoint (serialized) → channel id
        self._keys: dict[str, tuple[bytes, ...]] = {}  # channel id → its watched outpoints
        self._order: list[str] = []  # every watched txid (stale ones too), for `outpoints`
        self.unconfirmed: set[str] = set()  # channels whose contract is not in a block yet
        self._deadlines: dict[str, int] = {}  # open channel → when it must act
        self._heap: list[tuple[int, str]] = []  # (deadline, txid); stale entries skipped
        self._due: set[str] = set()  # open channels whose deadline the chain has reached
        self._reanchor: dict[str, tuple[bytes, ...]] = {}  # channel → R's wallet inputs

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, contract_txid: str) -> bool:
        return contract_txid in self._keys

    def add(self, contract_txid: str, index: int, deadline: int | None,
            contract_tx: bytes | None, current_txid: str = "",
            reanchor_tx: bytes | None = None) -> None:
        """Watch a channel (keyed by its id, `contract_txid`): its current contract's output
        (`current_txid`:`index`; '' while that is the channel's first contract), its
        contract's inputs while `contract_tx` is given (unconfirmed), the wallet inputs of a
        re-anchor R in flight (`reanchor_tx`: another spend of one is a double spend of R),
        its `deadline` while it is open (None: it is not)."""
        outpoint = OutPoint.from_hex(current_txid or contract_txid, index)
        keys: tuple[bytes, ...] = (outpoint.serialize(),)
        if contract_tx is not None:
            keys += tuple(txin.prevout.serialize()
                          for txin in Transaction.parse(contract_tx).inputs)
            self.unconfirmed.add(contract_txid)
        else:
            self.unconfirmed.discard(contract_txid)
        extra = () if reanchor_tx is None else tuple(
            txin.prevout.serialize() for txin in Transaction.parse(reanchor_tx).inputs[1:])
        self._unlink(contract_txid)
        if contract_txid not in self._keys:
            self._order.append(contract_txid)
        self._keys[contract_txid] = keys + extra
        if extra:
            self._reanchor[contract_txid] = extra
        else:
            self._reanchor.pop(contract_txid, None)
        for key in keys + extra:
            self._outpoints[key] = contract_txid
        if deadline is None:
            self.no_deadline(contract_txid)
        else:
            self.set_deadline(contract_txid, deadline)

    def confirmed(self, contract_txid: str) -> None:
        """The contract is in a block: its inputs need no watching any more."""
        keys = self._keys.get(contract_txid)
        if keys is None or contract_txid not in self.unconfirmed:
            return
        kept = keys[:1] + self._reanchor.get(contract_txid, ())
        for key in set(keys) - set(kept):
            self._outpoints.pop(key, None)
        self._keys[contract_txid] = kept
        self.unconfirmed.discard(contract_txid)

    def set_deadline(self, contract_txid: str, deadline: int) -> None:
        """The watched channel is open (again): wake up for it at `deadline`."""
        if contract_txid in self._keys and self._deadlines.get(contract_txid) != deadline:
            self._deadlines[contract_txid] = deadline
            heapq.heappush(self._heap, (deadline, contract_txid))

    def no_deadline(self, contract_txid: str) -> None:
        """The channel is no longer open: no deadline of its own to wake up for."""
        self._deadlines.pop(contract_txid, None)
        self._due.discard(contract_txid)

    def remove(self, contract_txid: str) -> None:
        """Stop watching a channel (forgotten or discarded)."""
        self._unlink(contract_txid)
        self._keys.pop(contract_txid, None)
        self._reanchor.pop(contract_txid, None)
        self.unconfirmed.discard(contract_txid)
        self.no_deadline(contract_txid)
        if len(self._order) > 2 * len(self._keys) + 1024:  # mostly stale: compact
            self._order = [txid for txid in self._order if txid in self._keys]

    def _unlink(self, contract_txid: str) -> None:
        for key in self._keys.get(contract_txid, ()):
            if self._outpoints.get(key) == contract_txid:
                del self._outpoints[key]

    def deadline(self, contract_txid: str) -> int | None:
        return self._deadlines.get(contract_txid)

    def due(self, clock: int) -> set[str]:
        """Open channels whose deadline is at or before `clock` (they stay due until they
        are no longer open)."""
        while self._heap and self._heap[0][0] <= clock:
            deadline, txid = heapq.heappop(self._heap)
            if self._deadlines.get(txid) == deadline:
                self._due.add(txid)
        return set(self._due)

    def next_deadline(self, after: float | None) -> int | None:
        """The earliest deadline of a channel not yet due, later than `after` (None: any)."""
        best: int | None = None
        stack = [0] if self._heap else []
        while stack:  # the heap's tree, pruned below any entry later than `after`
            i = stack.pop()
            deadline, txid = self._heap[i]
            if best is not None and deadline >= best:
                continue
            if (after is None or deadline > after) and self._deadlines.get(txid) == deadline:
                best = deadline
                continue
            stack += [c for c in (2 * i + 1, 2 * i + 2) if c < len(self._heap)]
        return best

    def outpoints(self, contract_txids: Iterable[str] | None = None) -> dict[str, OutPoint]:
        """The contract outputs of these watched channels (None: of all; safe to run in a
        worker thread, and then it should: for 100,000 channels it takes tens of ms)."""
        txids = self._order.copy() if contract_txids is None else contract_txids
        found = {}
        for txid in txids:
            keys = self._keys.get(txid)
            if keys is not None:
                found[txid] = OutPoint(keys[0][:32], int.from_bytes(keys[0][32:], "little"))
        return found

    def spent_by(self, tx: Transaction) -> set[str]:
        """The channels one of whose watched outpoints `tx` spends."""
        return {txid for txin in tx.inputs
                if (txid := self._outpoints.get(txin.prevout.serialize())) is not None}

    def scan(self, block: bytes) -> dict[str, list[Transaction]]:
        """The block's transactions that spend a watched outpoint, by channel, in block
        order (safe to run in a worker thread: it only reads the index)."""
        hits: dict[str, list[Transaction]] = {}
        for tx in parse_block_transactions(block):
            for txin in tx.inputs:
                txid = self._outpoints.get(txin.prevout.serialize())
                if txid is not None:
                    found = hits.setdefault(txid, [])
                    if not found or found[-1] is not tx:
                        found.append(tx)
        return hits
