"""The chain side of a stored channel, as pure functions: what blocks tell us, what to do.

`apply_block` / `revert_block` / `observe_mempool` fold chain facts into a ChainState;
`review` turns a record, its ChainState and the tip into effects: settle before the client's
refund becomes valid (server), refund once it is valid (client), re-broadcast what fell out
of the chain, replace a stuck closing transaction with a higher fee, and forget a channel only
when its closing transaction is buried `forget_depth` blocks deep. A channel whose contract
never made it on chain (its inputs spent elsewhere or missing, buried as deep) is discarded:
it is no money history.

The only clock is the chain: the tip's block time for the server's deadline, median-time-past
for the refund's validity (what nLockTime is checked against).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction
from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.contract import DUST, Contract
from bitcoind_paychan.channel.effects import (
    Broadcast,
    ChannelFinished,
    ClosingSeen,
    DiscardChannel,
    Effect,
    ForgetChannel,
    MarkChannel,
    PromoteChannel,
    Purpose,
    ReanchorEnded,
    SettleChannel,
    StoreChainState,
)
from bitcoind_paychan.channel.fees import FeePolicy
from bitcoind_paychan.channel.reanchor import promoted, promotion_depth
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.server import SETTLEMENT_MARGIN
from bitcoind_paychan.errors import PolicyError

BLOCK_INTERVAL = 600


@dataclass(frozen=True)
class Tip:
    height: int
    median_time: int
    time: int


@dataclass(frozen=True)
class WatchPolicy:
    """When to act and what to pay. `settle_margin` is how long before the expiry (by block
    time) the server settles: 0 derives it, at least two hours and at least twice the time
    the fee target allows."""

    settle_margin: int = 0  # 0: derived from fees.target
    forget_depth: int = 6
    bump_after_blocks: int = 2
    fees: FeePolicy = field(default_factory=FeePolicy)

    def __post_init__(self) -> None:
        if not self.settle_margin:
            margin = max(SETTLEMENT_MARGIN, 2 * self.fees.target * BLOCK_INTERVAL)
            object.__setattr__(self, "settle_margin", margin)
        if self.settle_margin < SETTLEMENT_MARGIN:
            raise PolicyError("settle_margin", f"found {self.settle_margin}, expected an "
                                               f"integer ≥ {SETTLEMENT_MARGIN} (seconds)")
        for name in ("forget_depth", "bump_after_blocks"):
            if getattr(self, name) < 1:
                raise PolicyError(name, f"found {getattr(self, name)}, expected an integer ≥ 1")


def contract_inputs(record: ChannelRecord) -> set[OutPoint]:
    return {txin.prevout for txin in Transaction.parse(record.contract_tx).inputs}


def apply_block(record: ChannelRecord, state: ChainState, txs: Sequence[Transaction],
                height: int) -> ChainState:
    """Fold one connected block into the channel's chain state. The block replaces whatever
    the state says was confirmed at its height or above (a reorg the watcher did not see,
    say while it was down after storing the old block's state)."""
    state = revert_block(state, height)
    contract = record.contract
    funding = contract_inputs(record) if not state.contract_height else set()
    for tx in txs:
        txid = tx.txid
        if txid == contract.outpoint.txid:
            state = replace(state, contract_height=height, conflict_height=0)
            funding = set()
            continue
        for txin in tx.inputs:
            if txin.prevout == contract.outpoint:
                state = replace(state, spender=tx.serialize(), spender_height=height)
            elif txin.prevout in funding:
                state = replace(state, conflict_height=height)
    return state


def revert_block(state: ChainState, height: int) -> ChainState:
    """A block at `height` was disconnected: what it confirmed is unconfirmed again."""
    return replace(
        state,
        contract_height=0 if state.contract_height >= height else state.contract_height,
        spender_height=0 if state.spender_height >= height else state.spender_height,
        conflict_height=0 if state.conflict_height >= height else state.conflict_height,
    )


def observe_mempool(state: ChainState, spender: Transaction | None) -> ChainState:
    """The mempool's spender of the contract (if the chain has none)."""
    if spender is None or state.spender_height:
        return state
    return replace(state, spender=spender.serialize())


MISSING_INPUTS = ("missing-inputs", "bad-txns-inputs-missingorspent")


def observe_missing_inputs(state: ChainState, reason: str, height: int) -> ChainState:
    """The node refused the never-confirmed contract for `reason` at tip `height`. If its
    inputs are missing (spent in a block, or never existed), count that as a conflict at
    `height`: at or after the real one, so the burial rule waits at least as long."""
    if state.contract_height or state.conflict_height or state.spender or not any(
            m in reason for m in MISSING_INPUTS):
        return state
    return replace(state, conflict_height=height)


def depth(tip: Tip, height: int) -> int:
    return tip.height - height + 1 if height else 0


def is_refund(tx: Transaction) -> bool:
    """Refunds carry the channel's lock time; payments and settlements have none."""
    return tx.locktime != 0


def client_share(contract: Contract, tx: Transaction) -> int:
    first = tx.outputs[0] if tx.outputs else None
    return first.value if first and first.script_pubkey == contract.change_script else 0


def review(record: ChannelRecord, state: ChainState, tip: Tip, fee_rate: int,
           policy: WatchPolicy, promote_depth: int = 1, reanchor_dead: bool = False
           ) -> list[Effect]:
    """What to do about one stored channel now. `promote_depth`: the confirmations of a
    re-anchor R after which the channel moves to the next contract (at least 1; a top-up R's:
    `policy.forget_depth`, `reanchor.promotion_depth`);
    `reanchor_dead`: the node says R can never confirm (an input of it spent elsewhere)."""
    txid, contract = record.channel_id, record.contract
    fee_rate = policy.fees.rate(fee_rate)
    if (state.spender and record.generation and record.pending is None
            and Transaction.parse(state.spender).txid_hex == record.contract_txid):
        # R's block folded in against the record before its promotion was stored (a race
        # the watcher's `moved` cannot see): R created the contract, so its block confirms
        # the contract; it is no spend of it.
        state = ChainState(contract_height=state.spender_height)
    if record.pending is not None and record.status is ChannelStatus.OPEN and not (
            state.conflict_height and not state.contract_height) and (
            not state.spender or reanchored(record, state)):
        return _reanchoring(record, state, tip, fee_rate, policy,
                            _promotion_depth(record, promote_depth, policy), reanchor_dead)
    if record.status is ChannelStatus.CLOSING and reanchored(record, state):
        # R beat the decided settlement of the contract (or is racing it): once R is in a
        # block the money is on the next contract, settled there at once; until then the
        # server's settlement (priced to replace R) goes out again.
        if state.spender_height:
            deep = depth(tip, state.spender_height) >= _promotion_depth(
                record, promote_depth, policy)
            return [PromoteChannel(txid)] if deep else []
        if record.role is Role.SERVER and record.settlement_tx:
            return _settle_again(record, record.settlement_tx, replace(state, spender=b""),
                                 fee_rate)
        return []
    if state.conflict_height and not state.contract_height:
        return _finish(record, state, tip, policy, ChannelStatus.FAILED, None)
    if state.spender:
        return _spent(record, state, tip, fee_rate, policy)
    if record.status is ChannelStatus.FAILED and state.contract_height:
        # Given up (never opened, or its contract's inputs went missing), yet on chain after
        # all: the money is in the channel, so it is live again: closing if it holds a
        # settlement (its client may broadcast that one: never open for payments again),
        # else open (settled or refunded as usual).
        settled = record.settlement_tx is not None and not is_refund(
            Transaction.parse(record.settlement_tx))
        return [MarkChannel(txid, ChannelStatus.CLOSING if settled else ChannelStatus.OPEN)]
    if record.status.final:
        return []  # a FAILED contract is never broadcast by us
    if record.role is Role.SERVER:
        if record.status is ChannelStatus.CLOSING and record.settlement_tx:
            return _settle_again(record, record.settlement_tx, state, fee_rate)
        if tip.time >= contract.expiry - policy.settle_margin:
            return [SettleChannel(txid)]
        if not state.contract_height:  # ours to broadcast (again, after a crash or eviction)
            return [Broadcast(Transaction.parse(record.contract_tx), Purpose.CONTRACT, txid)]
        return []
    if tip.median_time > contract.expiry:  # the refund is final now
        return _refund(record, state, tip, fee_rate)
    if record.status is ChannelStatus.CLOSING and record.settlement_tx:
        return [Broadcast(Transaction.parse(record.settlement_tx), Purpose.SETTLEMENT, txid)]
    return []


def _promotion_depth(record: ChannelRecord, promote_depth: int, policy: WatchPolicy) -> int:
    """The depth at which the channel's pending R is promoted (`reanchor.promotion_depth`)."""
    assert record.pending is not None
    return promotion_depth(Transaction.parse(record.pending.tx), promote_depth,
                           policy.forget_depth)


def reanchored(record: ChannelRecord, state: ChainState) -> bool:
    """The contract's spender is the channel's pending re-anchor R (issue 23)."""
    pending = record.pending
    return bool(pending and state.spender
                and Transaction.parse(state.spender).txid_hex == pending.txid)


def _reanchoring(record: ChannelRecord, state: ChainState, tip: Tip, fee_rate: int,
                 policy: WatchPolicy, promote_depth: int, dead: bool) -> list[Effect]:
    """An open channel with a re-anchor R in flight whose contract nothing but R spends: R
    buried `promote_depth` deep promotes the channel; the server's settle deadline before
    that settles the contract (replacing an unconfirmed R: its input 0 signals RBF), and so
    does R found `dead` (a top-up input spent elsewhere: the latest payment on the contract
    is the server's to take, rule 1), whose other wallet coins the client gets back; until
    then the server broadcasts its complete R (again: after a crash before its broadcast,
    after an eviction or a reorg)."""
    txid, pending = record.channel_id, record.pending
    assert pending is not None
    if state.spender_height:  # R is in a block
        return [PromoteChannel(txid)] if depth(tip, state.spender_height) >= promote_depth \
            else []
    r = Transaction.parse(pending.tx)
    if dead and record.role is Role.CLIENT:
        return [ReanchorEnded(txid, f"re-anchor {r.txid_hex} can never confirm: an input of "
                              "it was spent elsewhere", r)] if len(r.inputs) > 1 else []
    if record.role is Role.SERVER:
        if dead:
            return [SettleChannel(txid, f"its re-anchor {r.txid_hex} can never confirm")]
        if tip.time >= record.contract.expiry - policy.settle_margin:
            return [SettleChannel(txid)]
        if pending.complete and not state.spender:  # R is in no mempool we know of
            effects: list[Effect] = []
            if not state.contract_height:
                effects.append(Broadcast(Transaction.parse(record.contract_tx),
                                         Purpose.CONTRACT, txid))
            return [*effects, Broadcast(r, Purpose.REANCHOR, txid)]
        return []
    if tip.median_time > record.contract.expiry:
        return _refund(record, state, tip, fee_rate)
    return []


def _settle_again(record: ChannelRecord, settlement_tx: bytes, state: ChainState,
                  fee_rate: int) -> list[Effect]:
    """The channel's one settlement, again: the node holds no spender of the contract (a
    refused broadcast leaves the channel CLOSING, never OPEN). Its contract goes first while
    that is unconfirmed (it may have left the mempool); the settlement is re-signed at
    `fee_rate` if that is above its own (same payout script: a replacement, never a rival)."""
    txid = record.channel_id
    settlement = Transaction.parse(settlement_tx)
    effects: list[Effect] = []
    if not state.contract_height:
        effects.append(Broadcast(Transaction.parse(record.contract_tx), Purpose.CONTRACT, txid))
    repriced = (_bumped_settlement(record, settlement, fee_rate)
                if not is_refund(settlement)
                and fee_rate > _fee_rate_of(record.contract, settlement) else None)
    if repriced is None:
        return [*effects, Broadcast(settlement, Purpose.SETTLEMENT, txid)]
    return [MarkChannel(txid, ChannelStatus.CLOSING, closing_tx=repriced.serialize()),
            *effects, Broadcast(repriced, Purpose.SETTLEMENT, txid)]


def _buried(state: ChainState, tip: Tip, policy: WatchPolicy) -> bool:
    height = state.spender_height or state.conflict_height
    return depth(tip, height) >= policy.forget_depth


def _spent(record: ChannelRecord, state: ChainState, tip: Tip, fee_rate: int,
           policy: WatchPolicy) -> list[Effect]:
    spender = Transaction.parse(state.spender)
    refund = is_refund(spender)
    if state.spender_height:  # confirmed: the money has moved
        status = ChannelStatus.REFUNDED if refund else ChannelStatus.SETTLED
        return _finish(record, state, tip, policy, status, spender)
    txid = record.channel_id
    if record.role is Role.SERVER and not refund and (
            client_share(record.contract, spender) > record.change):
        return _contest(record, state, spender, tip, fee_rate)
    effects: list[Effect] = []
    ours = (record.role is Role.SERVER) != refund
    if record.status is not ChannelStatus.CLOSING:
        # OPEN: the other side closed it (or we did and crashed); final: a reorg undid it.
        effects.append(MarkChannel(txid, ChannelStatus.CLOSING, closing_tx=state.spender))
        if record.status is ChannelStatus.OPEN and not ours:
            effects.append(ClosingSeen(record, spender, refund))
    rebroadcast = Broadcast(spender, Purpose.REBROADCAST, txid)
    if ours and not state.fee_rate:  # start the clock for fee bumping (after a crash, too)
        paid = _fee_rate_of(record.contract, spender)
        return [*effects, StoreChainState(txid, replace(state, fee_rate=paid,
                                                        broadcast_height=tip.height)),
                rebroadcast]
    bumped = _bump(record, state, spender, tip, fee_rate, policy) if ours else []
    return effects + bumped if bumped else [*effects, rebroadcast]


# What a replacement adds to the fee rate it replaces (bitcoind's -incrementalrelayfee
# default, sat/kvB; one more covers `_fee_rate_of` rounding down).
INCREMENTAL_RELAY_FEE = 1_000


def _contest(record: ChannelRecord, state: ChainState, spender: Transaction, tip: Tip,
             fee_rate: int) -> list[Effect]:
    """The server sees an unconfirmed spend of the contract paying the client more than its
    stored change: not its settlement (it never lets its signature of one leave before it
    stores it), so never recorded as one. The application hears of it (ClosingSeen, once,
    while the channel is open), and the server replaces it with its own settlement through
    the payment leaf (the client's latest payment, the payout of the spend's last output:
    every non-refund spend carries the server's signature), at a fee rate that outbids it.
    The channel is CLOSING with that settlement; nothing is broadcast for the other spend,
    which becomes the closing transaction only when the server's share cannot outbid it."""
    txid = record.channel_id
    rate = max(fee_rate, _fee_rate_of(record.contract, spender) + INCREMENTAL_RELAY_FEE + 1)
    payout = spender.outputs[-1].script_pubkey
    ours = (_bumped_settlement(record, spender, rate)
            if len(spender.outputs) > 1 and payout != record.contract.change_script else None)
    effects: list[Effect] = []
    if record.status is ChannelStatus.OPEN:
        effects.append(ClosingSeen(record, spender, False))
    if ours is None:  # the share cannot outbid it: the channel is closing by the other spend
        if record.status is not ChannelStatus.CLOSING:
            effects.insert(0, MarkChannel(txid, ChannelStatus.CLOSING, closing_tx=state.spender))
        return effects
    return [MarkChannel(txid, ChannelStatus.CLOSING, closing_tx=ours.serialize()), *effects,
            StoreChainState(txid, replace(state, spender=ours.serialize(),
                                          broadcast_height=tip.height, fee_rate=rate)),
            Broadcast(ours, Purpose.FEE_BUMP, txid)]


def promoted_closing(record: ChannelRecord, fee_rate: int) -> ChannelRecord | None:
    """A CLOSING `record` whose re-anchor R confirmed after all: the channel on the next
    contract, still CLOSING (a decided settlement is final for the channel). The server's
    settlement moves to the next contract with the latest payment carried there, paying the
    same payout script at `fee_rate` (none if its share there cannot pay that, or the old one
    had wallet inputs); the client's old settlement is void. None: nothing to settle from."""
    moved = replace(promoted(record), status=ChannelStatus.CLOSING, settlement_tx=None)
    if record.role is Role.CLIENT:
        return moved
    if record.settlement_tx is None:
        return None
    settlement = _bumped_settlement(moved, Transaction.parse(record.settlement_tx), fee_rate)
    # None: R paid out nearly all the server had; what it earned since cannot pay a
    # settlement's fee: the client's refund after the next expiry closes the channel.
    return moved if settlement is None else replace(moved, settlement_tx=settlement.serialize())


def replacing_rate(record: ChannelRecord, payout_script: bytes) -> int:
    """The least rate (sat/kvB) at which the settlement of `record`'s contract replaces its
    pending re-anchor R in a mempool (BIP125: a higher rate, and a fee above R's by the
    incremental relay fee over the settlement's own size); 0 without a complete R. R's fee
    is exact without a top-up; with one, its rate over its size plus a dust's worth (the
    wallet's rounding of its change)."""
    pending = record.pending
    if pending is None or not pending.complete:
        return 0
    r, contract = Transaction.parse(pending.tx), record.contract
    if len(r.inputs) == 1:
        r_fee = contract.value - sum(output.value for output in r.outputs)
    else:
        r_fee = -(-pending.fee_rate * r.vsize // 1000) + DUST
    vsize = contract.settlement_fee(record.change, payout_script, 1000)  # at 1 sat/vB
    needed = r_fee + -(-INCREMENTAL_RELAY_FEE * vsize // 1000)
    return max(-(-needed * 1000 // vsize), r_fee * 1000 // r.vsize + INCREMENTAL_RELAY_FEE) + 1


def _fee_rate_of(contract: Contract, tx: Transaction) -> int:
    """sat/kvB of a tx spending only the contract (1 for others: any estimate beats it)."""
    if len(tx.inputs) != 1:
        return 1
    return (contract.value - sum(o.value for o in tx.outputs)) * 1000 // tx.vsize


def _finish(record: ChannelRecord, state: ChainState, tip: Tip, policy: WatchPolicy,
            status: ChannelStatus, closing: Transaction | None) -> list[Effect]:
    """Mark the outcome once; forget the channel once it is buried."""
    txid = record.channel_id
    effects: list[Effect] = []
    if record.status is not status:
        change = client_share(record.contract, closing) if closing else record.contract.value
        effects += [
            MarkChannel(txid, status, closing_tx=closing.serialize() if closing else None),
            ChannelFinished(record, status, closing, record.contract.value - change, change),
        ]
    if _buried(state, tip, policy):
        # As the store's rule: a channel whose contract confirmed or whose spender was seen
        # is history to keep (forget), else it is discarded.
        never_funded = (status is ChannelStatus.FAILED and not state.contract_height
                        and not state.spender)
        effects.append(DiscardChannel(txid) if never_funded else ForgetChannel(txid))
    return effects


def _refund(record: ChannelRecord, state: ChainState, tip: Tip, fee_rate: int) -> list[Effect]:
    txid, contract = record.channel_id, record.contract
    refund = contract.refund(record.key, fee_rate, record.refund_tx)
    effects: list[Effect] = []
    if not state.contract_height:  # the server may never have broadcast it
        effects.append(Broadcast(Transaction.parse(record.contract_tx), Purpose.CONTRACT, txid))
    return [*effects,
            MarkChannel(txid, ChannelStatus.CLOSING, closing_tx=refund.serialize()),
            StoreChainState(txid, replace(state, spender=refund.serialize(),
                                          broadcast_height=tip.height, fee_rate=fee_rate)),
            Broadcast(refund, Purpose.REFUND, txid)]


def _bump(record: ChannelRecord, state: ChainState, spender: Transaction, tip: Tip,
          fee_rate: int, policy: WatchPolicy) -> list[Effect]:
    """Replace our own stuck closing tx with one paying `fee_rate`, if that is higher."""
    stuck = tip.height - state.broadcast_height >= policy.bump_after_blocks
    if not (stuck and fee_rate > state.fee_rate):
        return []
    contract, txid = record.contract, record.channel_id
    if record.role is Role.CLIENT:
        replacement = contract.refund(record.key, fee_rate, record.refund_tx)
    else:
        replacement_or_none = _bumped_settlement(record, spender, fee_rate)
        if replacement_or_none is None:
            return []
        replacement = replacement_or_none
    return [MarkChannel(txid, ChannelStatus.CLOSING, closing_tx=replacement.serialize()),
            StoreChainState(txid, replace(state, spender=replacement.serialize(),
                                          broadcast_height=tip.height, fee_rate=fee_rate)),
            Broadcast(replacement, Purpose.FEE_BUMP, txid)]


def _bumped_settlement(record: ChannelRecord, settlement: Transaction,
                       fee_rate: int) -> Transaction | None:
    """The same settlement with the server's output shrunk to pay `fee_rate`; None when the
    share cannot (or the settlement carries wallet inputs, which only the wallet can re-sign)."""
    contract = record.contract
    if len(settlement.inputs) != 1:
        return None
    payout = settlement.outputs[-1].script_pubkey
    share = record.paid - contract.settlement_fee(record.change, payout, fee_rate)
    if share < DUST:
        return None
    draft = contract.settlement_draft(record.change, share, payout)
    return contract.sign_settlement(draft, record.signature, record.key)
