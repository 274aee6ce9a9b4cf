"""The review pipeline: the channels that need attention loaded, the mempool
asked in batches, `channel.watch.review` deciding, the leading store effects of all
channels written together, then the rest carried out per channel (a mixin of ChainWatcher)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.chainstate import ChainState
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
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.watch import (
    MISSING_INPUTS,
    Tip,
    observe_mempool,
    observe_missing_inputs,
    reanchored,
    review,
)
from bitcoind_paychan.errors import (
    NodeError,
    PaychanError,
    TransactionRejected,
)
from bitcoind_paychan.logcontext import about_channel
from bitcoind_paychan.node.ports import (
    Broadcaster,
    ChainSource,
    FeeEstimator,
    Outpoint,
)
from bitcoind_paychan.service.callbacks import Callbacks
from bitcoind_paychan.service.watcher.channels import SLICE, WatchedChannels

# The "watcher" subsystem's lines (daemon/logs.py), as before the watcher had its package.
log = logging.getLogger("bitcoind_paychan.service.watcher")
MAX_BACKOFF = 600.0
FINAL = tuple(status for status in ChannelStatus if status.final)
# The node's reasons for refusing a re-anchor R whose input another transaction spends.
DEAD = (*MISSING_INPUTS, "txn-mempool-conflict", "insufficient fee", "replacement")
WatchEvent = ClosingSeen | ChannelFinished
"""What the autopilot tells the application (a client's `on_event` hears these)."""


class ReviewPipeline(WatchedChannels):
    """Reviews: what to do for each channel that needs it, and doing it."""

    chain: ChainSource
    broadcaster: Broadcaster
    fees: FeeEstimator
    settle: Callable[[str], Awaitable[object]] | None
    promote: Callable[[str], Awaitable[ChannelRecord | None]] | None
    promote_depth: int
    reanchor_ended: Callable[[ReanchorEnded], Awaitable[None]] | None
    on_event: Callable[[WatchEvent], object] | None
    callbacks: Callbacks
    reviews: int
    reviewed_channels: int
    _lock: asyncio.Lock
    _backoff: float
    review_interval: float

    async def review_all(self, final: bool = True, touched: Iterable[str] = ()) -> None:
        """Look at the channels that need it and act: those `touched` by a block, those whose
        deadline the chain has reached, unconfirmed contracts and CLOSING channels; with
        `final` (the periodic review) also the final ones waiting to be buried, and every
        watched contract output against the mempool (batched). On a node failure, try again
        with backoff."""
        if final:
            await self._learn_channels()
        async with self._lock:
            try:
                await self._review_all(final, set(touched))
                self._backoff = 0.0
            except (NodeError, TransactionRejected) as exc:
                self._backoff = min(max(self._backoff * 2, 5.0), MAX_BACKOFF)
                now = dt.datetime.now(dt.UTC)
                retry = now + dt.timedelta(seconds=self._backoff)
                self.scheduler.add_job(self.review_all, "date", id="retry",
                                       replace_existing=True, run_date=retry)
                periodic = self.scheduler.get_job("review")
                if periodic is not None and periodic.next_run_time is not None:
                    retry = min(retry, periodic.next_run_time)  # whichever comes first
                log.warning("review failed (%s); again in %.0f s", exc,
                            max((retry - now).total_seconds(), 0.0))

    async def fee_rate(self) -> int:
        """The rate (sat/kvB) for a transaction built now: the node's estimate for the fee
        policy's target, clamped into its floor and cap."""
        fees = self.policy.fees
        return fees.rate(await self.fees.fee_rate(fees.target, fees.floor))

    async def _review_all(self, final: bool, touched: set[str]) -> None:
        self.reviews += 1
        chain_tip = await self.chain.tip()
        tip = Tip(chain_tip.height, chain_tip.median_time, chain_tip.time)
        clock = tip.time if self.role is Role.SERVER else tip.median_time
        statuses = (ChannelStatus.CLOSING, *FINAL) if final else (ChannelStatus.CLOSING,)
        listed = await asyncio.to_thread(self.store.channels, self.role, statuses)
        wanted = touched | self.index.due(clock) | self.index.unconfirmed
        wanted |= {record.channel_id for record in listed}
        # The mempool, asked in batches: for the periodic review every watched contract
        # output (a spend there is news of a channel nothing else points at).
        asked = None if final else frozenset(wanted)
        spenders = await self._spenders(asked) if len(self.index) and (
            asked is None or asked) else {}
        wanted |= set(spenders)
        loaded = await self._load(sorted(wanted))
        for txid in wanted - set(loaded):
            self.index.remove(txid)  # no longer stored
        self.reviewed_channels = len(loaded)
        if not loaded:
            return
        fee_rate = await self.fee_rate()
        plans = []
        for txid, (record, state) in loaded.items():
            plans.append((record, await self._plan(record, state, spenders.get(txid), tip,
                                                   fee_rate)))
            await asyncio.sleep(0)  # let payments in between channels
        # Each channel's leading store effects, of all channels at once: a block that settles
        # a hundred channels costs two store transactions, not two hundred.
        marks: dict[str, MarkChannel] = {}
        chain_states: dict[str, ChainState] = {}
        rest = []
        for record, effects in plans:
            for lead, effect in enumerate([*effects, None]):
                if isinstance(effect, MarkChannel):
                    marks[record.channel_id] = effect
                elif isinstance(effect, StoreChainState):
                    chain_states[record.channel_id] = effect.state
                else:
                    rest.append((record, effects[lead:]))
                    break
        await self._store_marks(marks, chain_states, {r.channel_id: r for r, _ in plans})
        failure: PaychanError | None = None
        for n, (record, effects) in enumerate(rest):
            if n:
                await asyncio.sleep(0)  # let payments in between channels
            try:
                for effect in effects:
                    await self._carry_out(record, effect, tip)
            except TransactionRejected as exc:
                failure = failure or exc
        if failure:
            raise failure

    async def _spenders(self, txids: frozenset[str] | None) -> dict[str, Transaction]:
        """The mempool's spenders of these watched channels' contract outputs (None: of all
        of them); the index is walked off the event loop."""
        pairs = await asyncio.to_thread(self._outpoints, txids)
        spent = await self.chain.spenders(list(pairs.values()))
        return await asyncio.to_thread(
            lambda: {txid: spent[pair] for txid, pair in pairs.items() if pair in spent})

    def _outpoints(self, txids: frozenset[str] | None) -> dict[str, Outpoint]:
        """Worker thread: the contract outpoint of each of these watched channels."""
        return {txid: (o.txid_hex, o.index) for txid, o in self.index.outpoints(txids).items()}

    async def _plan(self, record: ChannelRecord, state: ChainState,
                    mempool_spender: Transaction | None, tip: Tip, fee_rate: int
                    ) -> list[Effect]:
        """What `review` decides for one channel, once what the mempool (or, for a failed
        channel with no chain fact, the node) says is folded in and stored."""
        txid = record.channel_id
        if record.status is not ChannelStatus.OPEN:
            self.index.no_deadline(txid)
        dead = False
        if not state.spender_height and not record.status.final:
            if reanchored(record, state) and mempool_spender is None:  # R left the mempool
                state = await self._observed(txid, state, replace(state, spender=b""))
            state = await self._observed(txid, state, observe_mempool(state, mempool_spender))
            dead = await self._reanchor_dead(record, state)
        elif record.status is ChannelStatus.FAILED and not (
                state.conflict_height or state.contract_height or state.spender):
            # Failed with no chain fact to show for it (stored by an older version): are its
            # coins gone? Then it is discarded once that is buried, like any double spend.
            acceptance = await self.broadcaster.test_accept(Transaction.parse(record.contract_tx))
            state = await self._observed(txid, state, observe_missing_inputs(
                state, acceptance.reason, tip.height))
        return review(record, state, tip, fee_rate, self.policy, self.promote_depth, dead)

    async def _reanchor_dead(self, record: ChannelRecord, state: ChainState) -> bool:
        """An open channel's re-anchor R, in neither the mempool nor a block, can never
        confirm: the node refuses it for an input spent elsewhere (or a conflict)."""
        if record.pending is None or record.status is not ChannelStatus.OPEN or state.spender:
            return False
        acceptance = await self.broadcaster.test_accept(Transaction.parse(record.pending.tx))
        return not acceptance.allowed and any(m in acceptance.reason for m in DEAD)

    async def _store_marks(self, marks: dict[str, MarkChannel],
                           chain_states: dict[str, ChainState],
                           records: dict[str, ChannelRecord]) -> None:
        """Store new statuses (and closing transactions), then chain states, SLICE channels
        per transaction."""
        changes = [(txid, _marked(mark)) for txid, mark in marks.items()]
        for start in range(0, len(changes), SLICE):
            await asyncio.to_thread(self.store.modify_many, self.role,
                                    dict(changes[start:start + SLICE]))
        if chain_states:
            await self._put_chain_states(chain_states)
        for txid, mark in marks.items():
            if mark.status is ChannelStatus.OPEN:  # a given-up client channel confirmed
                self.index.set_deadline(txid, self._deadline(records[txid].contract.expiry))
                self._arm(self._armed_after)
            else:
                self.index.no_deadline(txid)
            log.info("channel %s is %s", txid, mark.status.value)

    @about_channel
    async def _carry_out(self, record: ChannelRecord, effect: Effect, tip: Tip) -> None:
        txid = record.channel_id
        match effect:
            case Broadcast(tx, purpose):
                if not await self._claim(f"broadcast:{tx.txid_hex}", self.review_interval / 2):
                    return
                try:
                    await self.broadcaster.broadcast(tx)
                    # Unconfirmed transactions are re-sent at every review: log those quietly.
                    quiet = purpose not in (Purpose.FEE_BUMP, Purpose.REFUND)
                    level = logging.DEBUG if quiet else logging.INFO
                    log.log(level, "broadcast %s %s for channel %s", purpose, tx.txid_hex, txid)
                except TransactionRejected as exc:
                    if purpose is not Purpose.CONTRACT:  # a contract already spent is no news
                        raise
                    log.debug("contract %s not taken: %s", txid, exc.reason)
                    state = await asyncio.to_thread(self.store.chain_state, self.role, txid)
                    await self._observed(txid, state,
                                         observe_missing_inputs(state, exc.reason, tip.height))
            case MarkChannel() | StoreChainState():
                marks = {txid: effect} if isinstance(effect, MarkChannel) else {}
                states = {txid: effect.state} if isinstance(effect, StoreChainState) else {}
                await self._store_marks(marks, states, {txid: record})
            case SettleChannel():
                if self.settle is None:
                    return
                if not await self._claim(f"settle:{txid}"):
                    self._look_again_after_takeover()  # its claimer may be dead
                    return
                log.info("channel %s %s: settling", txid, effect.reason)
                try:
                    await self.settle(txid)  # re-reads the channel after its lease
                finally:
                    await self._finish(f"settle:{txid}")
            case PromoteChannel():
                await self._promote(txid)
            case ReanchorEnded():
                if self.reanchor_ended is not None:
                    await self.reanchor_ended(effect)
            case ForgetChannel() | DiscardChannel():
                if isinstance(effect, ForgetChannel):
                    await asyncio.to_thread(self.store.forget, self.role, txid)
                    log.info("channel %s closed and buried: forgotten (its summary and "
                             "payments stay in the history)", txid)
                else:
                    await asyncio.to_thread(self.store.discard, self.role, txid)
                    log.info("channel %s never made it on chain: discarded", txid)
                self.index.remove(txid)
            case ClosingSeen() | ChannelFinished():
                self.callbacks.event(self.on_event, effect)


    async def moved(self, record: ChannelRecord) -> None:
        """The stored channel `record` was promoted to its next contract (here or by a
        connection): the chain state that saw R spend the old contract now describes the
        new one (R's block is its block), and the index watches it."""
        state = await asyncio.to_thread(self.store.chain_state, self.role, record.channel_id)
        if state.spender and Transaction.parse(state.spender).txid_hex == record.contract_txid:
            state = ChainState(contract_height=state.spender_height)
            await asyncio.to_thread(self.store.put_chain_state, self.role, record.channel_id,
                                    state)
        self.watch(record, state)

    async def _promote(self, channel_id: str) -> None:
        """R is buried deep enough: the manager promotes the stored channel (its duty
        claimed: one instance does it), telling a live connection; the chain state then
        describes the new contract (R's block is its block) and the index watches it."""
        if self.promote is None or not await self._claim(f"promote:{channel_id}"):
            return
        try:
            promoted = await self.promote(channel_id)
        finally:
            await self._finish(f"promote:{channel_id}")
        if promoted is None:
            return
        await self.moved(promoted)
        log.info("channel %s moved to its next contract %s (generation %d)", channel_id,
                 promoted.contract_txid, promoted.generation)


def _marked(mark: MarkChannel) -> Callable[[ChannelRecord], ChannelRecord]:
    """The record change a MarkChannel asks for: its status, and its closing tx if any."""
    def change(current: ChannelRecord) -> ChannelRecord:
        return replace(current, status=mark.status,
                       settlement_tx=current.settlement_tx if mark.closing_tx is None
                       else mark.closing_tx)
    return change
