"""The store's contract: what every engine promises, and the refusals they share.

A payment is acknowledged to the peer only after `record_payment` returns, so a durable engine
must have it on disk (surviving a crash and a power loss) by then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import StoreError


@dataclass(frozen=True, slots=True)
class PaymentLogEntry:
    """One stored payment: `amount` paid, leaving the client `change_after`.

    `seq` orders the whole log of one store and is never reused, even after `forget`.
    """

    role: Role
    contract_txid: str
    amount: int
    change_after: int
    info: bytes
    seq: int


@runtime_checkable
class ChannelStore(Protocol):
    """Channel records keyed by (role, contract_txid), plus an append-only payment log, each
    channel's ChainState (the chain watcher's, apart from the record) and a few meta settings.

    Every method is atomic and thread-safe; errors are `StoreError`s.
    """

    def put(self, record: ChannelRecord) -> None:
        """Insert or replace the whole record. Refuses a stale record whose `change` is above
        the stored one (it would lose payments)."""
        ...

    def record_payment(self, record: ChannelRecord, amount: int, info: bytes = b"") -> None:
        """Store `record`'s change/signature/payments and log the payment, in one transaction.
        Refuses an unknown channel and a `change` above the stored one."""
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
        self, role: Role, contract_txid: str | None = None, limit: int | None = None
    ) -> list[PaymentLogEntry]:
        """Logged payments of `role` (and one channel if given), newest first, at most `limit`."""
        ...

    def modify(
        self, role: Role, contract_txid: str, change: Callable[[ChannelRecord], ChannelRecord]
    ) -> ChannelRecord:
        """Store `change(stored record)` and return it, atomically: no other write (such as a
        `record_payment`) lands between the read and the write. Refuses an unknown channel, a
        result of another role or contract, and one whose `change` is above the stored one.
        `change` runs under the store's lock: it must be quick and must not use the store
        (that would deadlock). If it raises, nothing is stored and the exception propagates."""
        ...

    def chain_state(self, role: Role, contract_txid: str) -> ChainState:
        """The channel's stored ChainState (`ChainState()` if none was put); refuses an unknown
        channel."""
        ...

    def put_chain_state(self, role: Role, contract_txid: str, state: ChainState) -> None:
        """Replace the channel's ChainState; refuses an unknown channel. Leaves the record and
        the payment log alone."""
        ...

    def get_meta(self, key: str) -> str | None:
        """The value stored under `key`, or None."""
        ...

    def set_meta(self, key: str, value: str) -> None:
        """Store `value` under `key`, replacing any earlier value."""
        ...

    def forget(self, role: Role, contract_txid: str) -> None:
        """Delete a settled, refunded or failed channel, its payment log and its ChainState;
        refuse any other (its money is not settled). Forgetting an unknown channel does
        nothing."""
        ...

    def discard(self, role: Role, contract_txid: str) -> None:
        """Delete a channel whose contract never made it on chain, with its ChainState and
        payment log: it is no money history (nothing ever moved), so nothing of it is kept.
        Refuses any channel that is not FAILED, and one whose ChainState saw its contract
        confirmed or spent (use `forget`). Discarding an unknown channel does nothing."""
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


# -- refusals shared by the engines, so they say the same thing ----------------------------


def not_stored(role: Role, contract_txid: str) -> StoreError:
    return StoreError(
        f"cannot record a payment on {role} channel {contract_txid}: it is not stored; "
        "put() the channel before accepting payments on it"
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
