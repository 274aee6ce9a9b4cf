"""What the channel state machines ask their adapters to do, and what they report.

The machines return lists of these, in order; an adapter must carry them out in that order
and must not carry out a `Send` until every `Store*` before it is durable.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus
from bitcoind_paychan.errors import ErrorCode
from bitcoind_paychan.wire import pb


@dataclass(frozen=True, slots=True)
class Send:
    """Send this message to the peer."""

    message: pb.TwoWayChannelMessage


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Flush what was sent, then close the connection."""

    reason: str
    code: ErrorCode | None = None  # set when the connection ends in a protocol error


@dataclass(frozen=True, slots=True)
class StoreChannel:
    """Durably store the whole record (insert or replace)."""

    record: ChannelRecord


@dataclass(frozen=True, slots=True)
class StorePayment:
    """Durably store a new payment on a stored channel (the hot path)."""

    record: ChannelRecord
    amount: int
    info: bytes


class Purpose(StrEnum):
    """Why a `Broadcast` sends its transaction; its value is the word logs and errors use."""

    CONTRACT = "contract"
    SETTLEMENT = "settlement"
    REFUND = "refund"
    FEE_BUMP = "fee bump"  # a refund replaced with a higher fee
    REBROADCAST = "rebroadcast"  # what spent the contract, sent again after a reorg
    REANCHOR = "re-anchor"  # R: the contract spent into the next one (issue 23)


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Hand a transaction to the node, for `purpose`."""

    tx: Transaction
    purpose: Purpose
    contract_txid: str


@dataclass(frozen=True, slots=True)
class FundContract:
    """Client: have the wallet build and sign (not broadcast) a tx paying `value` to
    `script_pubkey` as output 0; answer with `ClientChannel.contract_funded`."""

    script_pubkey: bytes
    value: int


@dataclass(frozen=True, slots=True)
class CheckContract:
    """Server: ask the node whether it would accept this contract now (nothing is stored
    yet); answer with `ServerChannel.contract_checked`."""

    tx: Transaction


@dataclass(frozen=True, slots=True)
class LoadChannel:
    """Server: look up the stored channel with this contract; answer with
    `ServerChannel.channel_loaded`."""

    contract_txid: str


@dataclass(frozen=True, slots=True)
class ClaimChannel:
    """Server: this connection now owns the channel; drop any other connection on it."""

    contract_txid: str


@dataclass(frozen=True, slots=True)
class PrepareSettlement:
    """Server: fetch a fee rate and a payout script; answer with `ServerChannel.settle`."""

    contract_txid: str


@dataclass(frozen=True, slots=True)
class FundSettlement:
    """Server: the share cannot pay the fee. Have the wallet add (and sign) inputs and change
    to `draft` at `fee_rate` sat/kvB, counting `contract_input_weight` for input 0, which it
    must leave unsigned; answer with `ServerChannel.settle_funded`."""

    draft: Transaction
    contract_input_weight: int
    fee_rate: int


@dataclass(frozen=True, slots=True)
class PrepareReanchor:
    """Server: fetch a fee rate and a payout script for a re-anchor's quote (`payout_script`
    when not empty: this connection's earlier quote's, never a fresh one from the wallet);
    answer with `ServerChannel.quote_reanchor`."""

    contract_txid: str
    payout_script: bytes = b""


@dataclass(frozen=True, slots=True)
class FundReanchor:
    """Client: have the wallet add native segwit inputs and one change output to `draft` (R)
    at `fee_rate` sat/kvB, counting `contract_input_weight` for input 0, which it must leave
    unsigned, and paying every fee not already taken from the outputs; lock the coins;
    answer with `ClientChannel.reanchor_funded`."""

    draft: Transaction
    contract_input_weight: int
    fee_rate: int


@dataclass(frozen=True, slots=True)
class CheckReanchor:
    """Server: ask the node whether it would accept R (complete) now, and, unless empty,
    whether `payout_script` is our wallet's (a REANCHOR_SIGNED re-sent after a resume pays
    one this connection never quoted: refuse it unless it is); answer with
    `ServerChannel.reanchor_checked` (with R's fee as the node counts it, and when
    `resent`, no quote made on this connection, the current fee estimate). Nothing is
    stored yet."""

    tx: Transaction
    payout_script: bytes
    resent: bool = False


@dataclass(frozen=True, slots=True)
class ReanchorEnded:
    """A re-anchor exchange on this connection ended without a pending re-anchor: `reason`
    says why (declined by us, refused by the peer, or the node refused R). Client: the
    coins of R's wallet inputs, if any, are to be released (`tx`) once R cannot confirm."""

    contract_txid: str
    reason: str
    tx: Transaction | None = None


@dataclass(frozen=True, slots=True)
class ReanchorOffered:
    """Client with an autopilot (`refill_below`, `renew_before`): the server quoted a
    payout of `payout` sat unasked. Answer with `ClientChannel.reanchor` to propose our own
    re-anchor instead (the server's answer to it pays the payout too: one R for all), or
    with `ClientChannel.accept_offer` to sign the payout alone."""

    contract_txid: str
    payout: int


@dataclass(frozen=True, slots=True)
class ReanchorSigned:
    """R is complete and stored (the server broadcast it; the client got the ACK): the
    channel moves to the next contract once R confirms (the watcher's promotion)."""

    record: ChannelRecord


@dataclass(frozen=True, slots=True)
class ReanchorLocked:
    """Client: the server says R confirmed (REANCHOR_LOCKED). Its word alone moves nothing:
    once our own node shows R confirmed, store `reanchor.promoted(record)` and hand it to
    `ClientChannel.reanchor_confirmed`; until then payments stay signed on both contracts
    and C's refund stays ours."""

    record: ChannelRecord  # ours, R complete


# -- the chain watcher's requests ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SettleChannel:
    """Server: settle this stored channel now (`reason`: its expiry is near, or its
    re-anchor can never confirm)."""

    contract_txid: str
    reason: str = "nears its expiry"


@dataclass(frozen=True, slots=True)
class PromoteChannel:
    """The channel's re-anchor R is buried deep enough (issue 23): the stored channel moves
    to the next contract (`reanchor.promoted`), and a live connection is told."""

    contract_txid: str


@dataclass(frozen=True, slots=True)
class MarkChannel:
    """Set a stored channel's status (and, unless None, the tx closing it), atomically with
    respect to payments being stored on it."""

    contract_txid: str
    status: ChannelStatus
    closing_tx: bytes | None = None


@dataclass(frozen=True, slots=True)
class StoreChainState:
    """Durably store what the chain says about a channel."""

    contract_txid: str
    state: ChainState


@dataclass(frozen=True, slots=True)
class ForgetChannel:
    """The channel's money is settled and buried: remove it from the store."""

    contract_txid: str


@dataclass(frozen=True, slots=True)
class DiscardChannel:
    """The channel's contract never made it on chain and never can (its coins were spent
    elsewhere, buried): no money moved, so remove it from the store without keeping history."""

    contract_txid: str


# -- notifications for the application ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    record: ChannelRecord
    resumed: bool


@dataclass(frozen=True, slots=True)
class PaymentReceived:
    """Server: a payment was verified and stored (before it is acknowledged). Answer each
    with `payment_answered(event, info)`, in order: the ack (PAYMENT_ACK carrying `info`, the
    application's answer) is sent then; the opening's initial payment has no ack."""

    record: ChannelRecord
    amount: int
    info: bytes


@dataclass(frozen=True, slots=True)
class PaymentAcknowledged:
    """Client: the server acknowledged the payment; `info` is what it attached."""

    record: ChannelRecord
    amount: int
    info: bytes


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """The channel's settlement was broadcast (server) or received and checked (client)."""

    record: ChannelRecord
    settlement: Transaction


@dataclass(frozen=True, slots=True)
class ClosingSeen:
    """The other side's closing transaction is in the mempool, not confirmed yet: the
    server's settlement (`refund` False: the client hears it before ChannelFinished), or the
    client's refund (the server hears it). Sent once, when an open channel is first seen
    closing this way; ChannelFinished follows when it confirms."""

    record: ChannelRecord
    closing: Transaction
    refund: bool


@dataclass(frozen=True, slots=True)
class ChannelFinished:
    """The channel's money is settled on chain: by a settlement, a refund, or (FAILED) never
    locked because the contract's coins were spent elsewhere."""

    record: ChannelRecord
    status: ChannelStatus
    closing: Transaction | None
    server_amount: int  # gross: what the client gave up, fees included
    client_amount: int


@dataclass(frozen=True, slots=True)
class VersionRefused:
    """Client: the server does not speak the major version we offered. `lost`: it hung up
    without a word (a bitcoinj server's ERROR frame is often lost); nothing was stored."""

    version: int
    explanation: str
    lost: bool = False


@dataclass(frozen=True, slots=True)
class ResumeRefused:
    """Client: the server answered our resume with a fresh INITIATE: it no longer has this
    channel open (it settled it, or lost it). The chain will tell how it ends."""

    contract_txid: str


@dataclass(frozen=True, slots=True)
class PeerError:
    """The peer sent ERROR (or broke the protocol); the connection is over."""

    code: ErrorCode
    explanation: str
    remote: bool  # True when the peer sent it, False when we refused the peer


Effect = (
    Send | Disconnect | StoreChannel | StorePayment | Broadcast | FundContract | CheckContract
    | LoadChannel
    | ClaimChannel | PrepareSettlement | FundSettlement | ChannelOpened | PaymentReceived
    | PaymentAcknowledged | ChannelClosed | VersionRefused | ResumeRefused | PeerError
    | SettleChannel
    | MarkChannel | StoreChainState | ForgetChannel | DiscardChannel | ClosingSeen
    | ChannelFinished | PrepareReanchor | FundReanchor | CheckReanchor | ReanchorEnded
    | ReanchorOffered | ReanchorSigned | ReanchorLocked | PromoteChannel
)
