"""The store's contract: what every engine promises, and the refusals they share.

A payment is acknowledged to the peer only after `record_payment` returns, so a durable engine
must have it on disk (surviving a crash and a power loss) by then.

History is permanent: `forget` drops what a channel needs only while its money is at stake (our
private key, the client's latest signature, a pre-signed refund, the chain watcher's state) and
keeps its `ChannelSummary` and payment log until the operator prunes them (`prune_history`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import DecodeError, SettlementDecided, StoreError


@dataclass(frozen=True, slots=True)
class PaymentLogEntry:
    """One stored payment: `amount` paid, leaving the client `change_after`.

    `seq` is the payment's number in its channel (1: the initial payment made when the channel
    opened), so the channel's last entry carries its `payments` count. Each role of a channel
    counts on its own: a daemon paying its own server logs 1, 2, 3... under both roles.
    """

    role: Role
    contract_txid: str
    amount: int
    change_after: int
    info: bytes
    seq: int
    stored_at: int | None = None  # Unix seconds it was stored; None: logged before schema 5


@dataclass(frozen=True, slots=True)
class WatchedChannel:
    """What the autopilot's in-memory index holds of one live channel: the
    contract output it watches, the deadline it derives from `expiry`, and while the contract
    is unconfirmed its raw transaction (whose inputs a double spend would spend); None once
    the contract is confirmed."""

    contract_txid: str  # the channel's id
    outpoint_index: int
    expiry: int
    status: ChannelStatus
    contract_tx: bytes | None
    current_txid: str = ""  # the current contract's txid once re-anchored ('': the id)
    reanchor_tx: bytes | None = None  # R in flight (its wallet inputs are watched)


@dataclass(frozen=True, slots=True)
class ChannelSummary:
    """What stays of a forgotten (closed, buried) channel: its outcome, for the operator.

    `paid` is what the client's payments gave the server; the closing transaction (settlement
    or refund; none for a failed channel) split the contract's `value` into `to_client` (the
    client's output), `fee` (what the contract itself paid in fees; 0 when wallet inputs paid
    it) and `to_server` (the rest). Times are Unix seconds as this store saw them (`opened_at`
    is None for channels stored before the store kept it).
    """

    role: Role
    contract_txid: str
    version: int
    status: ChannelStatus
    value: int
    paid: int
    payments: int
    peer: str
    expiry: int
    closing_txid: str | None
    to_client: int
    to_server: int
    fee: int
    opened_at: int | None
    closed_at: int
    contract_tx: bytes
    closing_tx: bytes


def summarize(record: ChannelRecord, state: ChainState, opened_at: int | None,
              closed_at: int) -> ChannelSummary:
    """The summary kept when `record` (final; with its chain state) is forgotten."""
    contract = record.contract
    closing = b"" if record.status is ChannelStatus.FAILED else (
        state.spender or record.settlement_tx or b"")
    tx = _parsed(closing)
    to_client = fee = 0
    if tx is not None:
        first = tx.outputs[0] if tx.outputs else None
        if first is not None and first.script_pubkey == contract.change_script:
            to_client = first.value
        if len(tx.inputs) == 1:
            fee = max(contract.value - sum(o.value for o in tx.outputs), 0)
    return ChannelSummary(
        Role(record.role), record.channel_id, record.version, ChannelStatus(record.status),
        contract.value, record.paid, record.payments, record.peer, contract.expiry,
        tx.txid_hex if tx else None, to_client,
        contract.value - to_client - fee if tx else 0, fee, opened_at, closed_at,
        record.contract_tx, closing)


def _parsed(raw: bytes) -> Transaction | None:
    """The transaction, or None (none stored, or bytes no node would take: keep them raw)."""
    try:
        return Transaction.parse(raw) if raw else None
    except DecodeError:
        return None


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """What `paychan getinfo` says of a store: its engine, where it is (never a password) and
    the version of its schema."""

    engine: str
    location: str
    schema_version: int


Payment = tuple[ChannelRecord, int, bytes]  # a record_payment call: record, amount, info


@dataclass(frozen=True, slots=True)
class Generation:
    """One contract a re-anchored channel left behind (docs/design/reanchoring.md 9): kept
    while the channel is stored and after it is forgotten, until the history is pruned."""

    role: Role
    channel_id: str  # generation 0's contract txid: the channel's key in the store
    generation: int
    contract_txid: str
    contract_tx: bytes
    expiry: int
    value: int
    reanchor_txid: str  # R, which spent this contract (its output 0: the next one)
    payout: int  # gross sat R paid the server
    promoted_at: int  # Unix seconds: when the next generation replaced this one


@runtime_checkable
class ChannelStore(Protocol):
    """Channel records keyed by (role, contract_txid), plus an append-only payment log, each
    channel's ChainState (the chain watcher's, apart from the record) and a few meta settings.

    The key's `contract_txid` is the channel's id (`ChannelRecord.channel_id`: generation 0's
    contract txid), the same as the contract's txid until the channel is re-anchored; a record
    keeps it across generations (codec.py says why). A record of generation g + 1 (a promotion)
    replaces one of generation g only if it is the stored pending re-anchor's contract, and
    keeps generation g as a `Generation`; a payment or record of an older generation, or one
    that starts a second re-anchor while one is stored, is refused.

    Every method is atomic and thread-safe; errors are `StoreError`s.
    """

    def put(self, record: ChannelRecord) -> None:
        """Insert or replace the whole record. Refuses a stale record whose `change` is above
        the stored one (it would lose payments) and a status move STATUS_MOVES does not
        allow. A channel stored with money already paid
        (the initial payment of an opening) and no logged payment yet gets that payment logged,
        as number `record.payments`."""
        ...

    def put_many(self, records: Iterable[ChannelRecord]) -> None:
        """`put` each record, all in one transaction: every one is stored, or (on a refusal,
        which names the channel) none is."""
        ...

    def record_payment(self, record: ChannelRecord, amount: int, info: bytes = b"") -> None:
        """Store `record`'s change/signature/payments and log the payment, in one transaction.
        Refuses an unknown channel, a `change` above the stored one, and a channel whose
        stored status is not OPEN (its settlement was decided: `SettlementDecided`), checked
        in the same statement that stores the payment. While a re-anchor is stored the
        payment's signature on the next contract (`record.pending`) is stored with it, in the
        same statement; a payment of another generation, or one without that second signature
        while the stored re-anchor binds, is refused."""
        ...

    def record_payments(self, batch: Sequence[Payment]) -> list[StoreError | None]:
        """Group commit: each payment of `batch` as `record_payment` would store it, in order,
        all made durable by one commit. Returns, per payment, None (stored) or the refusal
        that left it (alone) unstored; a failure of the commit itself raises, storing none."""
        ...

    def get(self, role: Role, contract_txid: str) -> ChannelRecord | None:
        """The stored record, or None."""
        ...

    def channels(
        self, role: Role | None = None, statuses: Iterable[ChannelStatus] | None = None
    ) -> list[ChannelRecord]:
        """Stored records, optionally of one role and some statuses, by (role, contract_txid)."""
        ...

    def payments(
        self, role: Role, contract_txid: str | None = None, limit: int | None = None,
        since: int | None = None,
    ) -> list[PaymentLogEntry]:
        """Logged payments of `role` (and one channel, live or forgotten, if given), newest
        first, at most `limit`; with `since` (Unix seconds), only those stored then or later."""
        ...

    def payments_per_second(self, role: Role, since: int) -> list[tuple[int, int, int]]:
        """(second, payments, satoshis) for each second since `since` (Unix seconds) in which
        payments of `role` were stored, oldest first: what the dashboard rebuilds its last
        hour from."""
        ...

    def modify(
        self, role: Role, contract_txid: str, change: Callable[[ChannelRecord], ChannelRecord]
    ) -> ChannelRecord:
        """Store `change(stored record)` and return it, atomically: no other write (such as a
        `record_payment`) lands between the read and the write. Refuses an unknown channel, a
        result of another role or contract, one whose `change` is above the stored one, and a
        status move STATUS_MOVES does not allow.
        `change` runs under the store's lock: it must be quick and must not use the store
        (that would deadlock). If it raises, nothing is stored and the exception propagates."""
        ...

    def modify_many(
        self, role: Role, changes: Mapping[str, Callable[[ChannelRecord], ChannelRecord]]
    ) -> None:
        """`modify` each channel (by contract txid) with its change, all in one transaction:
        every one is stored, or (on a refusal) none is."""
        ...

    def chain_state(self, role: Role, contract_txid: str) -> ChainState:
        """The channel's stored ChainState (`ChainState()` if none was put); refuses an unknown
        channel."""
        ...

    def put_chain_state(self, role: Role, contract_txid: str, state: ChainState) -> None:
        """Replace the channel's ChainState; refuses an unknown channel. Leaves the record and
        the payment log alone."""
        ...

    def put_chain_states(self, role: Role, states: Mapping[str, ChainState],
                         meta: Mapping[str, str] | None = None) -> None:
        """Replace the ChainState of each channel in `states` (by contract txid) and set the
        `meta` settings, all in one transaction. Channels no longer stored (forgotten since
        they were read) are skipped."""
        ...

    def watched(self, role: Role, statuses: Iterable[ChannelStatus]) -> list[WatchedChannel]:
        """The channels of `role` in these statuses (the live ones), as the autopilot's index
        needs them (found through the status index)."""
        ...

    def load(self, role: Role, contract_txids: Iterable[str]
             ) -> dict[str, tuple[ChannelRecord, ChainState]]:
        """The stored records and ChainStates of these channels, by contract txid (channels
        not stored are left out)."""
        ...

    def chain_heights_from(self, role: Role, height: int) -> list[str]:
        """Contract txids of the channels whose ChainState records a block at `height` or
        above (contract, spender or conflict): what a reorg down to `height` may undo."""
        ...

    def get_meta(self, key: str) -> str | None:
        """The value stored under `key`, or None."""
        ...

    def set_meta(self, key: str, value: str) -> None:
        """Store `value` under `key`, replacing any earlier value."""
        ...

    def forget(self, role: Role, contract_txid: str) -> None:
        """Move a settled, refunded or failed channel to the history: its record (with its
        private key and signatures) and ChainState go, its `ChannelSummary` and payment log
        stay. Refuse any other channel (its money is not settled). Forgetting an unknown or
        already forgotten channel does nothing."""
        ...

    def history(
        self, role: Role | None = None, contract_txid: str | None = None
    ) -> list[ChannelSummary]:
        """Summaries of forgotten channels (of one role and one contract if given), most
        recently closed first."""
        ...

    def prune_history(self, before: int) -> int:
        """Delete the summaries and payment logs of forgotten channels closed before `before`
        (Unix seconds); return how many channels went. Stored channels (whose money may not be
        settled) are never touched."""
        ...

    def generations(self, role: Role, contract_txid: str) -> list[Generation]:
        """The superseded generations of the channel whose id is `contract_txid`, oldest
        first (the current one is its record). Forgetting the channel keeps them."""
        ...

    def discard(self, role: Role, contract_txid: str) -> None:
        """Delete a channel whose contract never made it on chain, with its ChainState and
        payment log: it is no money history (nothing ever moved), so nothing of it is kept.
        Refuses any channel that is not FAILED, and one whose ChainState saw its contract
        confirmed or spent (use `forget`). Discarding an unknown channel does nothing."""
        ...

    def info(self) -> StoreInfo:
        """The engine, where the store is, and its schema version."""
        ...

    def close(self) -> None:
        """Release the store; later calls raise StoreError. Closing twice is harmless."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Closable:
    """`with store:` closes it at the end."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- refusals shared by the engines, so they say the same thing ----------------------------


def not_stored(role: Role, contract_txid: str) -> StoreError:
    return StoreError(
        f"cannot record a payment on {role} channel {contract_txid}: it is not stored; "
        "put() the channel before accepting payments on it"
    )


def settlement_decided(role: Role, contract_txid: str, status: ChannelStatus,
                       what: str = "record a payment") -> StoreError:
    return SettlementDecided(
        f"cannot {what} on {role} channel {contract_txid}: it is {status}, not open (its "
        "settlement was decided); nothing was stored, so nothing may be acknowledged"
    )


def unknown_channel(role: Role, contract_txid: str, what: str) -> StoreError:
    return StoreError(
        f"cannot {what} of {role} channel {contract_txid}: it is not stored; put() the channel "
        "first"
    )


def other_channel(role: Role, contract_txid: str, new: ChannelRecord) -> StoreError:
    return StoreError(
        f"refusing to modify {role} channel {contract_txid} into {new.role} channel "
        f"{new.contract_txid}: modify() changes a channel's record, never which channel it is"
    )


def change_increased(role: Role, contract_txid: str, stored: int, new: int) -> StoreError:
    return StoreError(
        f"refusing to store {role} channel {contract_txid} with change {new} above the stored "
        f"{stored}: a payment never returns money to the client. The record is stale or wrong; "
        "re-read it with get() and apply the update to that"
    )


def check_generation(role: Role, channel_id: str, stored_generation: int, stored_next: str,
                     stored_status: ChannelStatus, record: ChannelRecord) -> bool:
    """Whether storing `record` over a row of `stored_generation` with pending re-anchor txid
    `stored_next` ('' none) promotes it (True: keep the stored generation as history); a
    StoreError if the record is of an older generation, skips one, promotes a contract that
    is not the stored pending one, or starts a second re-anchor (or one on a channel whose
    settlement was decided)."""
    what = f"{role} channel {channel_id}"
    if record.generation < stored_generation:
        raise StoreError(f"refusing to store {what} at generation {record.generation}: it was "
                         f"re-anchored to generation {stored_generation} meanwhile; the record "
                         "is stale: re-read it with get()")
    if record.generation > stored_generation:
        if record.generation != stored_generation + 1 or record.contract_txid != stored_next:
            raise StoreError(f"refusing to store {what} at generation {record.generation}: "
                             f"only the stored re-anchor ({stored_next or 'none'}) can become "
                             f"generation {stored_generation + 1}")
        return True
    pending = record.pending.txid if record.pending else ""
    if pending and pending != stored_next:
        if stored_next:
            raise StoreError(f"refusing to store a second re-anchor ({pending}) of {what}: "
                             f"re-anchor {stored_next} is stored; one at a time")
        if stored_status is not ChannelStatus.OPEN or record.status is not ChannelStatus.OPEN:
            raise StoreError(f"refusing to store a re-anchor of {what}: it is "
                             f"{stored_status}, its settlement is decided")
    return False


def other_generation(record: ChannelRecord, stored_generation: int,
                     stored_next: str) -> StoreError:
    """Why a payment signed on `record` does not fit the stored generation or re-anchor."""
    signed = record.pending.txid if record.pending else "none"
    return StoreError(
        f"refusing a payment on {record.role} channel {record.channel_id}: it was signed for "
        f"generation {record.generation} (re-anchor {signed}) while the store holds generation "
        f"{stored_generation} (re-anchor {stored_next or 'none'}), so it is not covered on "
        "every contract the channel may end on; it is not stored and must not be acknowledged"
    )


def check_move(role: Role, contract_txid: str, stored: ChannelStatus,
               new: ChannelStatus, settled: bool = False) -> None:
    """Refuse to store a channel whose stored status may not become `new` (STATUS_MOVES);
    `settled`: the new record holds a settlement, so it never becomes OPEN again (its client
    may broadcast that settlement: a payment taken after it would be lost)."""
    if settled and new is ChannelStatus.OPEN and stored is not ChannelStatus.OPEN:
        raise StoreError(
            f"refusing to move {role} channel {contract_txid} from {stored} to open: it holds "
            "a settlement (sent to its client), so it is never open again; mark it closing"
        )
    if not stored.may_become(new):
        raise StoreError(
            f"refusing to move {role} channel {contract_txid} from {stored} to {new}: a "
            f"{stored} channel never becomes {new} (see STATUS_MOVES). The record is stale or "
            "wrong; re-read it with get() and apply the update to that"
        )


def not_final(role: Role, contract_txid: str, status: ChannelStatus) -> StoreError:
    return StoreError(
        f"refusing to forget {role} channel {contract_txid}: its status is {status}, so its "
        "money is not settled; forget it only once it is settled, refunded or failed"
    )


def not_discardable(role: Role, contract_txid: str, why: str) -> StoreError:
    return StoreError(
        f"refusing to discard {role} channel {contract_txid}: {why}; only a FAILED channel "
        "whose contract never confirmed nor was spent is discarded (money history is kept)"
    )


def discard_refusal(status: ChannelStatus, state: ChainState) -> str | None:
    """Why a channel in `status` with chain state `state` may not be discarded, or None."""
    if status is not ChannelStatus.FAILED:
        return f"its status is {status}"
    if state.contract_height or state.spender:
        return "its contract was seen on chain"
    return None


def closed() -> StoreError:
    return StoreError("the channel store is closed; open it again to use it")


def newer_store(name: str, version: int, understood: int) -> str:
    """Why a store of a newer schema is refused (every engine says it alike)."""
    return (f"{name} has store schema version {version}, newer than this bitcoind-paychan "
            f"understands ({understood}); upgrade bitcoind-paychan to open it")


def shared(store: object) -> bool:
    """May other instances write `store` (PostgreSQL)? Else this process owns it alone
    (SQLite, under its lock file; memory)."""
    info = getattr(store, "info", None)
    return info is not None and info().engine == "postgresql"
