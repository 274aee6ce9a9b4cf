"""What each side stores durably about a channel: enough to refund or settle it after a crash."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import TxOut
from bitcoind_paychan.channel.contract import Contract


class Role(enum.StrEnum):
    SERVER = "server"
    CLIENT = "client"


class ChannelStatus(enum.StrEnum):
    """Where a stored channel's money is. Only SETTLED and REFUNDED channels may be forgotten."""

    OPEN = "open"  # contract funded; payments may flow
    CLOSING = "closing"  # settlement broadcast (or asked for); waiting for it to confirm
    SETTLED = "settled"  # settlement confirmed
    REFUNDED = "refunded"  # the client's refund confirmed
    FAILED = "failed"  # the contract never made it on chain (double-spent or abandoned)

    @property
    def final(self) -> bool:
        return self in (ChannelStatus.SETTLED, ChannelStatus.REFUNDED, ChannelStatus.FAILED)

    def may_become(self, status: ChannelStatus) -> bool:
        """Whether a stored channel of this status may be stored with `status` (STATUS_MOVES)."""
        return status in STATUS_MOVES[self]


_S = ChannelStatus
# Every legal move of a stored channel's status, the one table the stores enforce (staying is
# always legal: a payment or a repriced closing tx keeps the status). Money never returns to
# OPEN once a closing tx exists; a reorg may undo an outcome, so the final statuses move back
# to CLOSING (the closing tx left the chain for the mempool) or to another outcome (another
# spender, or a rival of the contract, confirmed instead). Who makes each move:
#   OPEN -> CLOSING: the server machine settles, the client machine closes, the watcher
#     refunds or sees the other side's closing tx
#   OPEN/CLOSING -> SETTLED/REFUNDED/FAILED: the watcher sees the outcome confirm (FAILED: a
#     rival of the contract confirmed); OPEN -> FAILED also: a client gives up on a contract
#     the server never took
#   FAILED -> OPEN: the watcher finds the given-up contract on chain after all (FAILED ->
#     CLOSING if it holds a settlement: the store refuses to move a record that holds one
#     back to OPEN, since its client may broadcast that settlement)
STATUS_MOVES: dict[ChannelStatus, frozenset[ChannelStatus]] = {
    _S.OPEN: frozenset(_S),
    _S.CLOSING: frozenset({_S.CLOSING, _S.SETTLED, _S.REFUNDED, _S.FAILED}),
    _S.SETTLED: frozenset({_S.SETTLED, _S.CLOSING, _S.REFUNDED, _S.FAILED}),
    _S.REFUNDED: frozenset({_S.REFUNDED, _S.CLOSING, _S.SETTLED, _S.FAILED}),
    _S.FAILED: frozenset(_S),
}


@dataclass(frozen=True)
class PendingReanchor:
    """A re-anchor in flight (docs/design/reanchoring.md): R, a cooperative spend of the
    channel's contract C creating the next contract C' (output 0), and the latest payment
    carried onto C'. `change` is always the record's change plus `offset`."""

    tx: bytes  # R: client-signed (the client's until the ACK), or complete
    contract: Contract  # C' = R:0
    payout: int  # gross sat R pays the server (its payout output plus its fee part)
    fee_rate: int  # sat/kvB, as the terms said
    change: int  # the client's change on C' in the latest payment
    signature: bytes  # the client's signature of that payment on C'
    complete: bool = False  # R carries both signatures: the server stored it as binding
    refused: bool = False  # client: the server refused it (no more double signing)
    spent: tuple[TxOut, ...] = ()  # the outputs R's inputs 1.. spend, for a kind whose
    # re-anchor signatures commit to them (v4: BIP341); () for the others

    @property
    def txid(self) -> str:
        return self.contract.txid

    def offset(self, current: Contract) -> int:
        """What a payment's change on C' adds to its change on `current` (C)."""
        return self.contract.value + self.payout - current.value

    @property
    def binding(self) -> bool:
        """Payments must be signed on both contracts (not refused)."""
        return not self.refused


@dataclass(frozen=True)
class ChannelRecord:
    """One channel as one side knows it. `change` is the client's change in the latest
    payment: for the server the lowest it has verified and stored; for the client the lowest
    it has signed and stored (possibly not yet acknowledged)."""

    role: Role
    contract: Contract
    contract_tx: bytes
    key: PrivateKey  # our own key for this channel (secret: the store must protect it)
    change: int
    signature: bytes  # the client's payment signature for `change` (DER + hashtype)
    status: ChannelStatus = ChannelStatus.OPEN
    refund_tx: bytes | None = None  # client, version 1: the fully signed refund (None:
    # no refund stored; versions 2 and 3 sign theirs when needed)
    settlement_tx: bytes | None = None  # the settlement we broadcast (server) or were sent
    # (client); None until there is one
    peer: str = ""  # client: the server as dialled (host:port, URL); server: the client as
    # the application named it (`accept(link, peer=...)`; a transport: its address)
    payments: int = 0
    generation: int = 0  # how many re-anchors confirmed before `contract`
    origin: str = ""  # the channel's id once re-anchored: generation 0's contract txid
    pending: PendingReanchor | None = None  # a re-anchor in flight

    @property
    def channel_id(self) -> str:
        """The channel's identity across generations: its first contract's txid."""
        return self.origin or self.contract.txid

    @property
    def contract_txid(self) -> str:
        return self.contract.txid

    @property
    def version(self) -> int:
        return self.contract.version

    @property
    def value(self) -> int:
        return self.contract.value

    @property
    def paid(self) -> int:
        """What the client has paid the server so far."""
        return self.contract.value - self.change

    def with_payment(self, change: int, signature: bytes) -> ChannelRecord:
        """This record after one more payment: `replace` without its per-call field walk (the
        hot path; the record has no derived fields to recompute)."""
        new = object.__new__(ChannelRecord)
        new.__dict__.update(self.__dict__, change=change, signature=signature,
                            payments=self.payments + 1)
        return new

    def with_payments(self, change: int, signature: bytes, next_signature: bytes
                      ) -> ChannelRecord:
        """One more payment signed on the contract and, during a re-anchor, on the next one
        (its change there: `change` plus the re-anchor's offset)."""
        pending = self.pending
        assert pending is not None and pending.binding, "a re-anchor in flight"
        carried = replace(pending, change=change + pending.offset(self.contract),
                          signature=next_signature)
        return replace(self.with_payment(change, signature), pending=carried)
