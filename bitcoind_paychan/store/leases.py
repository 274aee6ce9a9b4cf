"""Channel leases with fencing, and claimed duties: one writer per channel, one doer per duty.

Several server instances may serve one store (active-active, PostgreSQL). A server channel is
served by ONE connection at a time across all of them: the holder of its *lease*. A new channel
or a resume whose proof was checked acquires the lease at once (no waiting for the old holder
to expire) and the channel's *fencing token* goes up by one. Every payment write names the
lease it was made under and is stored only while that lease's token is still the channel's, in
the same transaction as the payment; otherwise it fails with `LeaseLost`, is not acknowledged,
and its connection ends with ERROR. After acquiring, the new holder re-reads the channel: what
the old holder stored before is in that read, and nothing it tries later is stored, so two
connections never accept diverging payments.

A *settlement* is an operation under the lease too: its CLOSING write (`store_settlement`) is
stored only while the lease it took is current and the channel is still OPEN, checked in the
same transaction; and no payment is stored on a channel that is not OPEN (the store's own rule),
so no payment is acknowledged once a settlement was decided, on any connection or instance.

*Duties* (a deadline's settlement) are claimed before they are done, so one instance does each;
a claim held by an instance that stopped beating its heart for `takeover_after` seconds is taken
over. `LocalLeases` is the engine for a store one process owns (SQLite, memory): the leases
live in the process, exact and as cheap as a dict lookup per payment.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from bitcoind_paychan.channel.reanchor import promoted
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.watch import promoted_closing
from bitcoind_paychan.errors import LeaseLost, PolicyError, StoreError
from bitcoind_paychan.store.base import ChannelStore, Payment, settlement_decided, shared
from bitcoind_paychan.store.credit import PaymentTake, TakingStore


@dataclass(frozen=True)
class ClusterPolicy:
    """Who this instance is among those sharing a store, and when a silent one is dead.

    `instance_id` names this instance in leases and claims (None: `<hostname>:<pid>`, new at
    each start); `takeover_after` is how long (seconds) an instance may miss its heartbeat
    before its claimed duties are taken over (its leases need no takeover: a resume takes a
    lease at once). Instances beat every `takeover_after` / 3 seconds."""

    instance_id: str | None = None
    takeover_after: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.takeover_after < 3600:
            raise PolicyError("takeover_after", f"found {self.takeover_after}, expected "
                              "seconds > 0 and < 3600 (a few seconds: a dead instance's "
                              "duties wait that long)")
        if self.instance_id is not None and not self.instance_id.strip():
            raise PolicyError("instance_id", "found an empty name, expected a name unique "
                              "among the instances (or null: hostname and pid)")

    @property
    def instance(self) -> str:
        return self.instance_id or f"{socket.gethostname()}:{os.getpid()}"

    @property
    def heartbeat_interval(self) -> float:
        return self.takeover_after / 3


@dataclass(frozen=True, slots=True)
class Lease:
    """A connection's hold on a channel: valid while `token` is the channel's token."""

    role: Role
    contract_txid: str
    holder: str  # instance/connection
    token: int


FencedPayment = tuple[Payment, Lease | None]  # None: no lease needed (a client's own channel)


class Leases(Protocol):
    """Leases and duty claims of the instances sharing one store. Thread-safe."""

    @property
    def instance(self) -> str: ...

    @property
    def shared(self) -> bool:
        """True when other instances may use the same store (their channels, their claims)."""
        ...

    @property
    def policy(self) -> ClusterPolicy:
        """This instance's name and the takeover timing."""
        ...

    def acquire(self, role: Role, contract_txid: str, holder: str) -> Lease:
        """Take the channel's lease for `holder` now, raising its token (whoever held it)."""
        ...

    def release(self, lease: Lease) -> None:
        """Give the lease up if it is still held (a later holder's is left alone)."""
        ...

    def record_payments(self, batch: Sequence[FencedPayment],
                        takes: Sequence[PaymentTake | None] = ()) -> list[StoreError | None]:
        """The store's group commit, each payment stored only while its lease is current
        (checked in the payment's transaction): per payment None, its refusal, or LeaseLost.
        `takes`: per payment, a take of credit made in the same transaction once it is
        stored (store/credit.py)."""
        ...

    def store_settlement(self, record: ChannelRecord, lease: Lease) -> None:
        """Store `record` (the channel CLOSING with its settlement) only while `lease` is the
        channel's current one and the stored channel is still OPEN with the same change,
        checked in the write's own transaction. LeaseLost (a newer holder: the client resumed
        elsewhere), SettlementDecided (not open any more) or StoreError: nothing stored, so
        the settlement must not be broadcast."""
        ...

    def store_reanchor(self, record: ChannelRecord, lease: Lease) -> None:
        """Store `record` (the channel with its complete pending re-anchor, the server's R)
        only while `lease` is current and the stored channel is still OPEN, at the same
        generation and change, with no other re-anchor, checked in the write's own
        transaction. LeaseLost, SettlementDecided or StoreError: nothing stored, so R must not
        be broadcast nor sent back."""
        ...

    def store_promotion(self, lease: Lease, fee_rate: int) -> ChannelRecord:
        """Promote the stored channel to its complete re-anchor's contract (`promoting`: R
        buried deep enough; a CLOSING channel's settlement moved to it at `fee_rate`) only
        while `lease` is current, in the write's own transaction; the promoted record.
        LeaseLost, SettlementDecided or StoreError: nothing stored."""
        ...

    def claim(self, duty: str, hold: float | None = None) -> bool:
        """True: this instance does `duty` now (no live instance holds it); False: leave it.
        The claim lasts until `finish` (or its instance is silent for `takeover_after`), or
        with `hold`, that many seconds (one rebroadcast per review, not one per instance)."""
        ...

    def finish(self, duty: str) -> None:
        """Give up the claim on `duty` (done, or to be tried again later)."""
        ...

    def heartbeat(self) -> None:
        """Say this instance is alive (its claims stay its own)."""
        ...


def lease_lost(lease: Lease) -> LeaseLost:
    return LeaseLost(
        f"payment on {lease.role} channel {lease.contract_txid} not stored: this connection "
        f"({lease.holder}) lost the channel's lease (token {lease.token}) to a newer "
        "connection, where the client resumed; nothing was acknowledged, this connection ends")


def settlement_lost(lease: Lease) -> LeaseLost:
    return LeaseLost(
        f"settlement of {lease.role} channel {lease.contract_txid} not stored: it was taken "
        f"under a lease (token {lease.token}) that a newer connection took over (the client "
        "resumed); the channel stays open and is settled again later")


def _taken(what: str, lease: Lease, then: str) -> LeaseLost:
    return LeaseLost(
        f"{what} of {lease.role} channel {lease.contract_txid} not stored: a newer "
        f"connection took the channel's lease (token {lease.token}); {then}")


def reanchor_lost(lease: Lease) -> LeaseLost:
    return _taken("re-anchor", lease, "it is neither broadcast nor sent back, and the "
                  "client's re-sent REANCHOR_SIGNED is checked afresh")


def reanchoring(record: ChannelRecord) -> Callable[[ChannelRecord], ChannelRecord]:
    """The `modify` change that stores the server's complete re-anchor `record` over the
    stored channel: only an OPEN one at the same generation and change (the store refuses a
    second re-anchor)."""
    def change(stored: ChannelRecord) -> ChannelRecord:
        if stored.status is not ChannelStatus.OPEN:
            raise settlement_decided(Role(stored.role), stored.channel_id, stored.status,
                                     "store a re-anchor")
        if (stored.change, stored.generation) != (record.change, record.generation):
            raise StoreError(
                f"re-anchor of {record.role} channel {record.channel_id} not stored: the "
                f"stored channel moved (change {stored.change}, generation "
                f"{stored.generation}) since it was checked; nothing is broadcast")
        return record
    return change


def promotion_lost(lease: Lease) -> LeaseLost:
    return _taken("promotion", lease, "it is promoted again at the next review")


def promoting(fee_rate: int) -> Callable[[ChannelRecord], ChannelRecord]:
    """The `modify` change that promotes the stored channel to its complete re-anchor's
    contract: an OPEN one; a CLOSING one (R confirmed after its settlement was decided)
    stays CLOSING, its settlement moved to the next contract at `fee_rate`
    (`watch.promoted_closing`)."""
    def change(stored: ChannelRecord) -> ChannelRecord:
        what = f"{stored.role} channel {stored.channel_id}"
        if stored.pending is None or not stored.pending.complete:
            raise StoreError(f"{what} holds no complete re-anchor to promote (promoted "
                             "already, or it was dropped)")
        if stored.status is ChannelStatus.OPEN:
            return promoted(stored)
        if stored.status is ChannelStatus.CLOSING:
            moved = promoted_closing(stored, fee_rate)
            if moved is not None:
                return moved
            raise StoreError(f"{what}: the settlement cannot move to the next contract")
        raise settlement_decided(Role(stored.role), stored.channel_id, stored.status,
                                 "promote a re-anchor")
    return change


def closing(record: ChannelRecord) -> Callable[[ChannelRecord], ChannelRecord]:
    """The `modify` change that stores the settlement `record` over the stored channel: only
    an OPEN one with the change the settlement pays (else nothing is stored)."""
    def change(stored: ChannelRecord) -> ChannelRecord:
        if stored.status is not ChannelStatus.OPEN:
            raise settlement_decided(Role(stored.role), stored.contract_txid, stored.status,
                                     "store a settlement")
        if stored.change != record.change:
            raise StoreError(
                f"settlement of {record.role} channel {record.contract_txid} not stored: it "
                f"pays change {record.change} but the stored change is {stored.change} (a "
                "payment was stored since it was read); settle again")
        return record
    return change


def fenced(batch: Sequence[FencedPayment], tokens: Mapping[tuple[Role, str], int],
           store: Callable[[list[Payment], list[PaymentTake | None]],
                           list[StoreError | None]],
           takes: Sequence[PaymentTake | None] = ()) -> list[StoreError | None]:
    """Store (with `store`, and each one's take of `takes`) the payments of `batch` whose
    lease is the channel's current one (`tokens`: the channels' tokens, read under a lock the
    commit keeps) or that need none; LeaseLost for the others. Per payment, its outcome."""
    outcomes: list[StoreError | None] = [
        None if lease is None or tokens.get((lease.role, lease.contract_txid)) == lease.token
        else lease_lost(lease) for _, lease in batch]
    current = [index for index, refused in enumerate(outcomes) if refused is None]
    stored = iter(store([batch[index][0] for index in current],
                        [takes[index] if takes else None for index in current])
                  if current else [])
    return [refused if refused is not None else next(stored) for refused in outcomes]


class LocalLeases:
    """The leases of a store owned by this process alone: held in memory (tokens start again
    at each start, as every connection does). A payment's check and its commit happen under
    one lock that `acquire` takes too, so once `acquire` returns, no payment of an older lease
    is stored."""

    def __init__(self, store: ChannelStore, policy: ClusterPolicy | None = None) -> None:
        self.store = store
        self._policy = policy or ClusterPolicy()
        self._instance = self._policy.instance
        self._lock = threading.Lock()
        self._tokens: dict[tuple[Role, str], int] = {}
        self._holders: dict[tuple[Role, str], str] = {}
        self._duties: set[str] = set()
        self._duty_lock = threading.Lock()  # apart: a claim never waits for a commit

    @property
    def instance(self) -> str:
        return self._instance

    @property
    def policy(self) -> ClusterPolicy:
        return self._policy

    shared = False  # one process owns the store

    def acquire(self, role: Role, contract_txid: str, holder: str) -> Lease:
        key = (Role(role), contract_txid)
        with self._lock:
            token = self._tokens[key] = self._tokens.get(key, 0) + 1
            self._holders[key] = holder
        return Lease(key[0], contract_txid, holder, token)

    def release(self, lease: Lease) -> None:
        key = (lease.role, lease.contract_txid)
        with self._lock:
            if self._tokens.get(key) == lease.token:
                self._holders.pop(key, None)

    def holder(self, role: Role, contract_txid: str) -> str | None:
        """Who holds the channel's lease now (None: nobody)."""
        return self._holders.get((Role(role), contract_txid))

    def record_payments(self, batch: Sequence[FencedPayment],
                        takes: Sequence[PaymentTake | None] = ()) -> list[StoreError | None]:
        with self._lock:
            return fenced(batch, self._tokens, self._record, takes)

    def _record(self, payments: list[Payment], takes: list[PaymentTake | None]
                ) -> list[StoreError | None]:
        if not any(takes):  # a store that keeps no credit need not take them
            return self.store.record_payments(payments)
        assert isinstance(self.store, TakingStore), "takes need a store that keeps credit"
        return self.store.record_payments(payments, takes)

    def store_settlement(self, record: ChannelRecord, lease: Lease) -> None:
        self._store_fenced(lease, closing(record), settlement_lost)

    def store_reanchor(self, record: ChannelRecord, lease: Lease) -> None:
        self._store_fenced(lease, reanchoring(record), reanchor_lost)

    def store_promotion(self, lease: Lease, fee_rate: int) -> ChannelRecord:
        return self._store_fenced(lease, promoting(fee_rate), promotion_lost)

    def _store_fenced(self, lease: Lease, change: Callable[[ChannelRecord], ChannelRecord],
                      lost: Callable[[Lease], LeaseLost]) -> ChannelRecord:
        with self._lock:  # as a payment's: no acquisition between the check and the write
            if self._tokens.get((lease.role, lease.contract_txid)) != lease.token:
                raise lost(lease)
            return self.store.modify(lease.role, lease.contract_txid, change)

    def claim(self, duty: str, hold: float | None = None) -> bool:
        if hold is not None:
            return True  # nobody else to do it
        with self._duty_lock:
            if duty in self._duties:
                return False
            self._duties.add(duty)
            return True

    def finish(self, duty: str) -> None:
        with self._duty_lock:
            self._duties.discard(duty)

    def heartbeat(self) -> None:
        """One process: nobody else to tell."""


def leases_for(store: ChannelStore, policy: ClusterPolicy | None = None) -> Leases:
    """The leases of `store`: in the database when other instances may share it (PostgreSQL),
    else in this process (a store it owns alone: SQLite, memory)."""
    if shared(store):
        from bitcoind_paychan.store.postgres_leases import PostgresLeases

        return PostgresLeases(store, policy)
    return LocalLeases(store, policy)
