"""A ChannelStore in plain dicts. NOT durable: everything is lost with the process.

For tests and tools only; never acknowledge real payments stored here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import StoreError
from bitcoind_paychan.store.base import (
    ChannelSummary,
    Closable,
    Generation,
    Payment,
    PaymentLogEntry,
    StoreInfo,
    WatchedChannel,
    change_increased,
    check_generation,
    check_move,
    closed,
    discard_refusal,
    not_discardable,
    not_final,
    not_stored,
    other_channel,
    other_generation,
    settlement_decided,
    summarize,
    unknown_channel,
)
from bitcoind_paychan.store.codec import SCHEMA_VERSION, pending_txid
from bitcoind_paychan.store.credit import (
    PaymentTake,
    Take,
    TakesOne,
    check_takes,
    given,
    taken_after,
    taking,
)

_Key = tuple[Role, str]


class MemoryStore(TakesOne, Closable):
    """The ChannelStore contract, in memory, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[_Key, ChannelRecord] = {}
        self._log: list[PaymentLogEntry] = []
        self._chain: dict[_Key, ChainState] = {}
        self._meta: dict[str, str] = {}
        self._history: dict[_Key, ChannelSummary] = {}
        self._times: dict[_Key, tuple[int, int | None]] = {}  # opened, closed
        self._generations: list[Generation] = []
        self._spent: dict[str, int] = {}  # the gateway's credit taken, by server channel
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise closed()

    def put(self, record: ChannelRecord) -> None:
        self.put_many([record])

    def put_many(self, records: Iterable[ChannelRecord]) -> None:
        batch = {(Role(r.role), r.channel_id): r for r in records}
        with self._lock:
            self._check_open()
            for key, record in batch.items():
                old = self._records.get(key)
                if old is not None:
                    _check_over(old, record)
            for key, record in batch.items():
                new = key not in self._records
                self._store(key, record)
                if new and record.paid and not self._logged(key):
                    self._log.append(PaymentLogEntry(*key, record.paid, record.change, b"",
                                                     record.payments, int(time.time())))

    def _store(self, key: _Key, record: ChannelRecord) -> None:
        """Store `record`, stamping when it opened and when its money was first final, and
        keeping the generation it promotes as history."""
        now = int(time.time())
        old = self._records.get(key)
        if old is not None and old.pending is not None and record.generation > old.generation:
            self._generations.append(Generation(
                *key, old.generation, old.contract_txid, old.contract_tx, old.contract.expiry,
                old.contract.value, old.pending.txid, old.pending.payout, now))
        opened, closed_at = self._times.get(key, (now, None))
        closed_at = (closed_at or now) if record.status.final else None
        self._times[key] = (opened, closed_at)
        self._records[key] = record
        self._history.pop(key, None)  # stored again: it is no longer history

    def _logged(self, key: _Key) -> bool:
        return any((e.role, e.contract_txid) == key for e in self._log)

    def record_payment(self, record: ChannelRecord, amount: int, info: bytes = b"") -> None:
        refusal = self.record_payments([(record, amount, info)])[0]
        if refusal is not None:
            raise refusal

    def record_payments(self, batch: Sequence[Payment],
                        takes: Sequence[PaymentTake | None] = ()) -> list[StoreError | None]:
        with self._lock:
            self._check_open()
            outcomes = [self._record_one(*payment) for payment in batch]
            taken_after(outcomes, takes, lambda take: self._take_one(*take))
            return outcomes

    def _record_one(self, record: ChannelRecord, amount: int, info: bytes) -> StoreError | None:
        key = (Role(record.role), record.channel_id)
        old = self._records.get(key)
        if old is None:
            return not_stored(*key)
        if old.status is not ChannelStatus.OPEN:
            return settlement_decided(*key, old.status)
        # During a stored re-anchor the payment carries its signature on the next contract too.
        stored_next = pending_txid(old.pending)
        same = stored_next == pending_txid(record.pending)
        binds = old.pending is not None and old.pending.binding
        if record.generation != old.generation or (binds and not same):
            return other_generation(record, old.generation, stored_next)
        if record.change > old.change:
            return change_increased(*key, old.change, record.change)
        pending = old.pending
        if same and pending is not None and record.pending is not None:
            pending = replace(pending, change=record.pending.change,
                              signature=record.pending.signature)
        self._records[key] = replace(
            old, change=record.change, signature=record.signature, payments=record.payments,
            pending=pending,
        )
        self._log.append(PaymentLogEntry(*key, amount, record.change, bytes(info), record.payments,
                                         int(time.time())))
        return None

    def get(self, role: Role, contract_txid: str) -> ChannelRecord | None:
        with self._lock:
            self._check_open()
            return self._records.get((Role(role), contract_txid))

    def channels(
        self, role: Role | None = None, statuses: Iterable[ChannelStatus] | None = None
    ) -> list[ChannelRecord]:
        wanted = None if statuses is None else {ChannelStatus(s) for s in statuses}
        with self._lock:
            self._check_open()
            return [
                rec
                for key, rec in sorted(self._records.items(), key=lambda item: item[0])
                if (role is None or key[0] == role) and (wanted is None or rec.status in wanted)
            ]

    def payments(
        self, role: Role, contract_txid: str | None = None, limit: int | None = None,
        since: int | None = None,
    ) -> list[PaymentLogEntry]:
        with self._lock:
            self._check_open()
            found = [
                e
                for e in reversed(self._log)
                if e.role == role and (contract_txid is None or e.contract_txid == contract_txid)
                and (since is None or (e.stored_at or 0) >= since)
            ]
        return found if limit is None else found[: max(limit, 0)]

    def payments_per_second(self, role: Role, since: int) -> list[tuple[int, int, int]]:
        seconds: dict[int, tuple[int, int]] = {}
        for entry in self.payments(role, since=since):
            count, amount = seconds.get(entry.stored_at or 0, (0, 0))
            seconds[entry.stored_at or 0] = (count + 1, amount + entry.amount)
        return [(second, *seconds[second]) for second in sorted(seconds)]

    def modify(
        self, role: Role, contract_txid: str, change: Callable[[ChannelRecord], ChannelRecord]
    ) -> ChannelRecord:
        with self._lock:
            self._check_open()
            key = (Role(role), contract_txid)
            new = self._changed(*key, change)
            self._store(key, new)
            return new

    def modify_many(
        self, role: Role, changes: Mapping[str, Callable[[ChannelRecord], ChannelRecord]]
    ) -> None:
        with self._lock:
            self._check_open()
            new = {(Role(role), txid): self._changed(Role(role), txid, change)
                   for txid, change in changes.items()}
            for key, record in new.items():
                self._store(key, record)

    def _changed(self, role: Role, contract_txid: str,
                 change: Callable[[ChannelRecord], ChannelRecord]) -> ChannelRecord:
        """The checked result of `change` on the stored record (under the lock)."""
        key = (role, contract_txid)
        old = self._records.get(key)
        if old is None:
            raise unknown_channel(*key, "modify the record")
        new = change(old)
        if (Role(new.role), new.channel_id) != key:
            raise other_channel(*key, new)
        _check_over(old, new)
        return new

    def chain_state(self, role: Role, contract_txid: str) -> ChainState:
        key = (Role(role), contract_txid)
        with self._lock:
            self._check_open()
            if key not in self._records:
                raise unknown_channel(*key, "read the chain state")
            return self._chain.get(key, ChainState())

    def put_chain_state(self, role: Role, contract_txid: str, state: ChainState) -> None:
        key = (Role(role), contract_txid)
        with self._lock:
            self._check_open()
            if key not in self._records:
                raise unknown_channel(*key, "store the chain state")
            self._chain[key] = state

    def put_chain_states(self, role: Role, states: Mapping[str, ChainState],
                         meta: Mapping[str, str] | None = None) -> None:
        with self._lock:
            self._check_open()
            for txid, state in states.items():
                if (Role(role), txid) in self._records:
                    self._chain[(Role(role), txid)] = state
            self._meta.update(meta or {})

    def watched(self, role: Role, statuses: Iterable[ChannelStatus]) -> list[WatchedChannel]:
        wanted = {ChannelStatus(s) for s in statuses}
        with self._lock:
            self._check_open()
            return [
                WatchedChannel(txid, rec.contract.outpoint.index, rec.contract.expiry,
                               rec.status, None if self._chain.get(
                                   key, ChainState()).contract_height else rec.contract_tx,
                               rec.contract_txid if rec.generation else "",
                               rec.pending.tx if rec.pending else None)
                for key, rec in sorted(self._records.items(), key=lambda item: item[0])
                if key[0] == role and rec.status in wanted
                for txid in (key[1],)
            ]

    def load(self, role: Role, contract_txids: Iterable[str]
             ) -> dict[str, tuple[ChannelRecord, ChainState]]:
        with self._lock:
            self._check_open()
            keys = [(Role(role), txid) for txid in contract_txids]
            return {key[1]: (self._records[key], self._chain.get(key, ChainState()))
                    for key in keys if key in self._records}

    def chain_heights_from(self, role: Role, height: int) -> list[str]:
        with self._lock:
            self._check_open()
            return sorted(key[1] for key, s in self._chain.items() if key[0] == role and max(
                s.contract_height, s.spender_height, s.conflict_height) >= height)

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            self._check_open()
            return self._meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._check_open()
            self._meta[key] = value

    def forget(self, role: Role, contract_txid: str) -> None:
        key = (Role(role), contract_txid)
        with self._lock:
            self._check_open()
            rec = self._records.get(key)
            if rec is None:
                return
            if not rec.status.final:
                raise not_final(*key, rec.status)
            opened, closed_at = self._times.pop(key)
            self._history[key] = summarize(rec, self._chain.pop(key, ChainState()), opened,
                                           closed_at or int(time.time()))
            del self._records[key]
            if key[0] is Role.SERVER:
                self._spent.pop(contract_txid, None)

    def history(
        self, role: Role | None = None, contract_txid: str | None = None
    ) -> list[ChannelSummary]:
        with self._lock:
            self._check_open()
            found = [h for (r, t), h in self._history.items()
                     if (role is None or r == role) and contract_txid in (None, t)]
        # Stable sort of the newest-archived first: ties keep that order.
        return sorted(reversed(found), key=lambda h: h.closed_at, reverse=True)

    def prune_history(self, before: int) -> int:
        with self._lock:
            self._check_open()
            old = {k for k, h in self._history.items() if h.closed_at < before}
            for key in old:
                del self._history[key]
            self._log = [e for e in self._log if (e.role, e.contract_txid) not in old]
            self._generations = [g for g in self._generations
                                 if (g.role, g.channel_id) not in old]
            return len(old)

    def generations(self, role: Role, contract_txid: str) -> list[Generation]:
        with self._lock:
            self._check_open()
            return sorted((g for g in self._generations
                           if (g.role, g.channel_id) == (role, contract_txid)),
                          key=lambda g: g.generation)

    def discard(self, role: Role, contract_txid: str) -> None:
        key = (Role(role), contract_txid)
        with self._lock:
            self._check_open()
            if key not in self._records:
                return
            state = self._chain.get(key, ChainState())
            why = discard_refusal(self._records[key].status, state)
            if why:
                raise not_discardable(*key, why)
            self._drop(key)

    def _drop(self, key: _Key) -> None:
        """Remove the channel, its chain state and its log (under the lock)."""
        del self._records[key]
        self._chain.pop(key, None)
        self._times.pop(key, None)
        if key[0] is Role.SERVER:
            self._spent.pop(key[1], None)
        self._log = [e for e in self._log if (e.role, e.contract_txid) != key]

    # -- the gateway's credit (store/credit.py) ---------------------------------------------

    def credit(self, contract_txid: str) -> int:
        with self._lock:
            return self._paid(contract_txid) - self._spent.get(contract_txid, 0)

    def take_credits(self, takes: Sequence[Take]) -> list[tuple[int | None, int]]:
        check_takes(takes)
        with self._lock:
            self._check_open()
            answers = [self._take_one(*take) for take in takes]
        return answers

    def take_credits_now(self, takes: Sequence[Take]) -> list[tuple[int | None, int]] | None:
        return self.take_credits(takes)  # memory: a moment under its lock

    def _take_one(self, contract_txid: str, least: int, most: int) -> tuple[int | None, int]:
        """One take (under the lock)."""
        spent = self._spent.get(contract_txid, 0)
        paid = self._paid(contract_txid)
        taken = taking(paid, spent, least, most)
        if taken:
            self._spent[contract_txid] = spent + taken
        return taken, max(paid - spent - (taken or 0), 0)

    def give_credit(self, contract_txid: str, sat: int) -> None:
        with self._lock:
            self._check_open()
            if sat and (Role.SERVER, contract_txid) in self._records:
                self._spent[contract_txid] = given(self._spent.get(contract_txid, 0), sat,
                                                   contract_txid)

    def _paid(self, contract_txid: str) -> int:
        """What the channel's client paid in its life (store/credit.py's PAID)."""
        record = self._records.get((Role.SERVER, contract_txid))
        return 0 if record is None else record.paid + sum(
            g.payout for g in self._generations
            if (g.role, g.channel_id) == (Role.SERVER, contract_txid))

    def info(self) -> StoreInfo:
        return StoreInfo("memory", "memory (not durable)", SCHEMA_VERSION)

    def close(self) -> None:
        with self._lock:
            self._closed = True


def _check_over(old: ChannelRecord, new: ChannelRecord) -> None:
    """Refuse storing `new` over `old` (the same channel) as every engine does."""
    key = (Role(old.role), old.channel_id)
    check_move(*key, old.status, new.status, new.settlement_tx is not None)
    check_generation(*key, old.generation, pending_txid(old.pending), old.status, new)
    if new.change > old.change and new.generation == old.generation:
        raise change_increased(*key, old.change, new.change)
