"""The autopilot: keeps one side's stored channels safe while nobody watches.

It follows the node's blocks (BlockMonitor: ZMQ wake-ups, polling, reorgs), scans each block
once against its index of watched outpoints (`WatchIndex`, rebuilt from the store at start),
folds it into the channels it touches, and carries out what `channel.watch.review` decides for
the channels that need attention. With ZMQ, each transaction entering the node's mempool
(`rawtx`) is matched against the index too, and the channels it spends from are reviewed at
once (the review asks the node: ZMQ only wakes it). APScheduler wakes it once, at the
earliest deadline (a restart loses none, and one missed while the process was down fires at
once), on a safety interval, and for retries with backoff while the node refuses a refund
as non-final or cannot be reached. Store and node calls run off the event loop, a block's
channels are loaded and stored in slices of SLICE, and no loop step walks all channels, so a
payment is never held up by more than a few milliseconds of the watcher's work. With `leases` (a
server), a deadline's settlement and each broadcast are claimed first, so one instance of those
sharing the store does each; and when the store is shared, the index re-reads the live channels
at each block and review, so it learns of channels other instances opened.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace

from apscheduler.schedulers.asyncio import AsyncIOScheduler

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
    Purpose,
    SettleChannel,
    StoreChainState,
)
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.watch import (
    Tip,
    WatchPolicy,
    apply_block,
    observe_mempool,
    observe_missing_inputs,
    revert_block,
    review,
)
from bitcoind_paychan.errors import (
    DecodeError,
    InvalidParameter,
    NodeError,
    PaychanError,
    TransactionRejected,
)
from bitcoind_paychan.logcontext import about_channel
from bitcoind_paychan.node.bitcoind import Block
from bitcoind_paychan.node.monitor import BlockMonitor, ChainEvent
from bitcoind_paychan.node.ports import Node, NodePorts, Outpoint
from bitcoind_paychan.service.callbacks import Callbacks
from bitcoind_paychan.service.watchindex import WatchIndex
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.store.base import WatchedChannel
from bitcoind_paychan.store.leases import Leases

log = logging.getLogger(__name__)
MAX_BACKOFF = 600.0
# Channels loaded or stored per store call: the store serves one call at a time, and a
# payment's commit waits for the call in progress, so a block touching many channels is
# worked through in slices of this size (see ARCHITECTURE.md, "the autopilot's index").
SLICE = 25
# Channels whose money may still move are in the index: blocks are scanned for them. Final
# ones (waiting to be buried, then forgotten or discarded) are looked at by the periodic review
# only, and by a reorg that may undo what finished them. A client's FAILED channel (given up
# before it opened) stays live: its contract may still confirm, and then it must be refunded.
# Strangers cannot create client rows.
LIVE = {Role.SERVER: (ChannelStatus.OPEN, ChannelStatus.CLOSING),
        Role.CLIENT: (ChannelStatus.OPEN, ChannelStatus.CLOSING, ChannelStatus.FAILED)}
FINAL = tuple(status for status in ChannelStatus if status.final)
WatchEvent = ClosingSeen | ChannelFinished
"""What the autopilot tells the application (a client's `on_event` hears these)."""


@dataclass(frozen=True)
class ChannelView:
    """One channel's state, deadline (server: when it settles; client: from when its refund
    is valid), txids and confirmations, for applications and the CLI."""

    role: str
    contract_txid: str
    version: int
    status: str
    value: int
    paid: int
    change: int
    payments: int
    peer: str
    expiry: int
    deadline: int
    contract_confirmations: int
    closing_txid: str | None
    closing_confirmations: int


class ChainWatcher:
    """Watches the chain for every stored channel of `role`, through `node`'s chain source,
    broadcaster and fee estimator (a `Node`, or `NodePorts`)."""

    def __init__(
        self,
        role: Role,
        node: Node | NodePorts,
        store: ChannelStore,
        policy: WatchPolicy | None = None,
        *,
        settle: Callable[[str], Awaitable[object]] | None = None,
        on_event: Callable[[WatchEvent], object] | None = None,
        zmq_endpoint: str | None = None,
        poll_interval: float = 5.0,
        review_interval: float = 60.0,
        leases: Leases | None = None,
        callbacks: Callbacks | None = None,
    ) -> None:
        self.role = role
        self.leases = leases
        ports = NodePorts.of(node)
        self.chain, self.broadcaster, self.fees = ports.chain, ports.broadcaster, ports.fees
        self.store = store
        self.policy = policy or WatchPolicy()
        self.settle = settle
        self.on_event = on_event
        self.callbacks = callbacks or Callbacks()  # the application's, isolated
        self.zmq_endpoint = zmq_endpoint
        self.poll_interval = poll_interval
        self.review_interval = review_interval
        self.scheduler = AsyncIOScheduler(timezone=dt.UTC)
        self.monitor: BlockMonitor | None = None
        self.index = WatchIndex()
        self.reviews = 0
        self.reviewed_channels = 0  # how many channels the last review looked at
        self.block_channels = 0  # how many channels the last chain event was folded into
        self._lock = asyncio.Lock()
        self._new_block = asyncio.Event()
        self._mempool_touched: set[str] = set()  # spent from in the mempool, to review
        self._mempool_review: asyncio.Task[None] | None = None
        self._backoff = 0.0
        self._armed_after: float | None = None
        self._meta_key = f"synced:{role.value}"

    def attach(self, role: Role, store: ChannelStore, *,
               settle: Callable[[str], Awaitable[object]] | None = None,
               on_event: Callable[[WatchEvent], object] | None = None,
               leases: Leases | None = None, callbacks: Callbacks | None = None) -> None:
        """A manager takes this watcher on: it must watch the manager's `role` in its
        `store`; the manager's hooks (settle, events, leases, callbacks) replace its own."""
        if role is not self.role:
            raise InvalidParameter(f"watcher: a {self.role.value} watcher cannot serve a "
                                   f"{role.value} manager; build it with Role.{role.name}")
        if store is not self.store:
            raise InvalidParameter("watcher: it watches another store than the manager's; "
                                   "build it with the manager's store")
        if self.scheduler.running:
            raise InvalidParameter("watcher: already started; give a manager a new watcher")
        self.settle, self.on_event, self.leases = settle, on_event, leases
        self.callbacks = callbacks or self.callbacks

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the index from the store, catch up from the last processed block, then
        follow the chain and the deadlines."""
        synced = await asyncio.to_thread(self.store.get_meta, self._meta_key)
        start_from = None
        if synced:
            height, block_hash = synced.split(":")
            start_from = (int(height), block_hash)
        self.monitor = BlockMonitor(self.chain, self._on_chain_event,
                                    zmq_endpoint=self.zmq_endpoint,
                                    poll_interval=self.poll_interval, start_from=start_from,
                                    on_transaction=self._mempool_transaction)
        await asyncio.to_thread(self._build_index)
        # The index lives as long as the process: keep its large dicts and heap (and all else
        # alive now) out of the collector's full passes, which would otherwise walk them while
        # holding the event loop (tens of ms with 100,000 channels).
        gc.collect()
        gc.freeze()
        self.scheduler.start()
        self.scheduler.add_job(self.review_all, "interval", seconds=self.review_interval,
                               id="review", coalesce=True, max_instances=1)
        if self.leases is not None and self.leases.shared:
            self.scheduler.add_job(self._heartbeat, "interval", id="heartbeat",
                                   seconds=self.leases.policy.heartbeat_interval, coalesce=True,
                                   max_instances=1, next_run_time=dt.datetime.now(dt.UTC))
        self._arm(None)  # a deadline missed while the process was down fires at once
        await self.monitor.start()
        await self.review_all()

    async def _heartbeat(self) -> None:
        assert self.leases is not None
        try:
            await asyncio.to_thread(self.leases.heartbeat)
        except PaychanError as exc:
            log.warning("heartbeat failed (%s): other instances take this one's duties over "
                        "if it stays silent", exc)

    async def _learn_channels(self) -> None:
        """A shared store: channels other instances stored join the index (its deadlines
        too), so a block or a deadline reaches them here as well. The store is read in a
        worker thread; the index is changed only on the loop, a slice at a time."""
        if self.leases is None or not self.leases.shared:
            return
        channels = await asyncio.to_thread(self.store.watched, self.role, LIVE[self.role])
        learnt = 0
        for channel in channels:
            if channel.contract_txid in self.index:
                continue
            self._index_channel(channel)
            learnt += 1
            if learnt % SLICE == 0:
                await asyncio.sleep(0)  # let payments in
        if learnt:
            self._arm(self._armed_after)

    def _build_index(self) -> None:
        """Worker thread, at start (before anything else uses the index): the live channels
        of the store into the index."""
        for channel in self.store.watched(self.role, LIVE[self.role]):
            if channel.contract_txid not in self.index:
                self._index_channel(channel)

    def _index_channel(self, channel: WatchedChannel) -> None:
        open_ = channel.status is ChannelStatus.OPEN
        self.index.add(channel.contract_txid, channel.outpoint_index,
                       self._deadline(channel.expiry) if open_ else None, channel.contract_tx)

    async def stop(self) -> None:
        if self.monitor:
            await self.monitor.stop()
        if self._mempool_review is not None:
            self._mempool_review.cancel()
        gc.unfreeze()  # what start froze may be collected again (the index, once dropped)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def _deadline(self, expiry: int) -> int:
        """When a channel expiring at `expiry` needs action: the server's settle time (by
        block time), the client's refund time (by median-time-past)."""
        return expiry - self.policy.settle_margin if self.role is Role.SERVER else expiry

    def watch(self, record: ChannelRecord, state: ChainState | None = None) -> None:
        """Watch a channel (call it once the record is stored, before its contract can be
        broadcast): its contract, the contract's inputs until it confirms, its deadline."""
        if record.status not in LIVE[self.role] and state is None:
            return
        unconfirmed = state is None or not state.contract_height
        self.index.add(record.contract_txid, record.contract.outpoint.index,
                       self._deadline(record.contract.expiry)
                       if record.status is ChannelStatus.OPEN else None,
                       record.contract_tx if unconfirmed else None)
        if self.scheduler.running:
            self._arm(self._armed_after)

    def schedule_deadline(self, record: ChannelRecord) -> None:
        """Watch the channel; the wake-up moves to its deadline if that is the earliest."""
        if record.contract_txid not in self.index:
            self.watch(record)

    def _arm(self, after: float | None) -> None:
        """One wake-up, at the earliest deadline later than `after` (None: the earliest of
        all; one already past fires at once)."""
        self._armed_after = after
        deadline = self.index.next_deadline(after)
        job = self.scheduler.get_job("deadline")
        if deadline is None:
            if job:
                job.remove()
            return
        when = dt.datetime.fromtimestamp(deadline, dt.UTC)
        if job and job.next_run_time == when:
            return
        self.scheduler.add_job(self._wake, "date", run_date=when, args=(deadline,),
                               id="deadline", replace_existing=True, misfire_grace_time=None,
                               coalesce=True)

    async def _wake(self, deadline: int) -> None:
        """A deadline came: review the channels that are due, then wait for the next one."""
        try:
            await self.review_all(final=False)
        finally:
            self._arm(max(deadline, int(dt.datetime.now(dt.UTC).timestamp())))

    @property
    def healthy(self) -> bool:
        """False while the node cannot be reached."""
        return self.monitor is not None and self.monitor.healthy

    def deadline_of(self, contract_txid: str) -> dt.datetime | None:
        """When the watched open channel needs action (None: not watched or not open)."""
        deadline = self.index.deadline(contract_txid)
        return None if deadline is None else dt.datetime.fromtimestamp(deadline, dt.UTC)

    # -- chain events ----------------------------------------------------------------------

    async def _on_chain_event(self, event: ChainEvent) -> None:
        await self._learn_channels()
        async with self._lock:
            records: dict[str, ChannelRecord] = {}
            before: dict[str, ChainState] = {}
            states: dict[str, ChainState] = {}

            async def load(txids: list[str]) -> None:
                for txid, (record, state) in (await self._load(txids)).items():
                    records[txid], before[txid], states[txid] = record, state, state

            if event.disconnected:  # what the reorg may undo, watched again
                low = min(block.height for block in event.disconnected)
                await load(await asyncio.to_thread(self.store.chain_heights_from, self.role, low))
                for block in event.disconnected:
                    log.info("block %s at %s disconnected", block.hash, block.height)
                    states = {t: revert_block(s, block.height) for t, s in states.items()}
                for txid, state in states.items():
                    self.watch(records[txid], state)
            for block in event.connected:
                hits = await self._scan(block) if len(self.index) else {}
                await load([txid for txid in hits if txid not in records])
                for n, (txid, txs) in enumerate(hits.items(), 1):
                    if txid in records:
                        states[txid] = apply_block(records[txid], states[txid], txs,
                                                   block.height)
                    if n % SLICE == 0:
                        await asyncio.sleep(0)  # let payments in
            changed = {t: s for t, s in states.items() if s != before[t]}
            tip = event.tip
            await self._put_chain_states(changed, {self._meta_key: f"{tip.height}:{tip.hash}"})
            for txid, state in changed.items():
                if state.contract_height:
                    self.index.confirmed(txid)
            self.block_channels = len(records)
        self._new_block.set()
        self._new_block = asyncio.Event()
        await self.review_all(final=False, touched=set(records))

    def _mempool_transaction(self, raw: bytes) -> None:
        """ZMQ `rawtx`: a transaction reached the node. If it spends a watched outpoint, its
        channels are reviewed now rather than at the next periodic review."""
        try:
            touched = self.index.spent_by(Transaction.parse(raw))
        except DecodeError:
            return
        if touched:
            self._mempool_touched |= touched
            if self._mempool_review is None or self._mempool_review.done():
                self._mempool_review = asyncio.create_task(self._review_mempool_spends())

    async def _review_mempool_spends(self) -> None:
        while self._mempool_touched:
            touched, self._mempool_touched = self._mempool_touched, set()
            await self.review_all(final=False, touched=touched)

    async def _scan(self, block: Block) -> dict[str, list[Transaction]]:
        """The block's transactions touching watched channels (fetched and scanned off the
        event loop)."""
        raw = await self.chain.raw_block(block.hash)
        return await asyncio.to_thread(self.index.scan, raw)

    async def until_confirmed(self, contract_txid: str, confirmations: int) -> None:
        """Return once the contract is `confirmations` deep (at once for 0)."""
        while confirmations > 0:
            state = await asyncio.to_thread(self.store.chain_state, self.role, contract_txid)
            height = state.contract_height
            tip = self.monitor.tip if self.monitor else None
            if height and tip and tip.height - height + 1 >= confirmations:
                return
            await self._new_block.wait()

    def view(self, record: ChannelRecord) -> ChannelView:
        """What a person watching this channel wants to know."""
        state = self.store.chain_state(self.role, record.contract_txid)
        tip = self.monitor.tip.height if self.monitor and self.monitor.tip else 0
        deadline = record.contract.expiry
        if self.role is Role.SERVER:
            deadline -= self.policy.settle_margin
        # The closing transaction seen on chain; before that, the settlement stored as soon
        # as it was made (server) or received (client).
        closing = (Transaction.parse(state.spender).txid_hex if state.spender
                   else Transaction.parse(record.settlement_tx).txid_hex
                   if record.settlement_tx else None)
        return ChannelView(
            role=self.role.value, contract_txid=record.contract_txid, version=record.version,
            status=record.status.value, value=record.value, paid=record.paid,
            change=record.change, payments=record.payments, peer=record.peer,
            expiry=record.contract.expiry, deadline=deadline,
            contract_confirmations=tip - state.contract_height + 1 if state.contract_height
            else 0,
            closing_txid=closing,
            closing_confirmations=tip - state.spender_height + 1 if state.spender_height
            else 0,
        )

    # -- reviews ---------------------------------------------------------------------------

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
        wanted |= {record.contract_txid for record in listed}
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
                    marks[record.contract_txid] = effect
                elif isinstance(effect, StoreChainState):
                    chain_states[record.contract_txid] = effect.state
                else:
                    rest.append((record, effects[lead:]))
                    break
        await self._store_marks(marks, chain_states, {r.contract_txid: r for r, _ in plans})
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
        txid = record.contract_txid
        if record.status is not ChannelStatus.OPEN:
            self.index.no_deadline(txid)
        if not state.spender_height and not record.status.final:
            state = await self._observed(txid, state, observe_mempool(state, mempool_spender))
        elif record.status is ChannelStatus.FAILED and not (
                state.conflict_height or state.contract_height or state.spender):
            # Failed with no chain fact to show for it (stored by an older version): are its
            # coins gone? Then it is discarded once that is buried, like any double spend.
            acceptance = await self.broadcaster.test_accept(Transaction.parse(record.contract_tx))
            state = await self._observed(txid, state, observe_missing_inputs(
                state, acceptance.reason, tip.height))
        return review(record, state, tip, fee_rate, self.policy)

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

    async def _load(self, txids: list[str]) -> dict[str, tuple[ChannelRecord, ChainState]]:
        """The stored records and chain states of these channels, loaded in slices."""
        loaded: dict[str, tuple[ChannelRecord, ChainState]] = {}
        for start in range(0, len(txids), SLICE):
            loaded.update(await asyncio.to_thread(self.store.load, self.role,
                                                  txids[start:start + SLICE]))
        return loaded

    async def _put_chain_states(self, states: dict[str, ChainState],
                                meta: dict[str, str] | None = None) -> None:
        """Store these chain states in slices, `meta` with the last one (a crash in between
        leaves the block to be processed again: folding it in twice changes nothing)."""
        items = list(states.items())
        for start in range(0, max(len(items), 1), SLICE):
            last = start + SLICE >= len(items)
            await asyncio.to_thread(self.store.put_chain_states, self.role,
                                    dict(items[start:start + SLICE]), meta if last else None)

    async def _observed(self, txid: str, state: ChainState, seen: ChainState) -> ChainState:
        if seen != state:
            await asyncio.to_thread(self.store.put_chain_state, self.role, txid, seen)
        return seen

    @about_channel
    async def _carry_out(self, record: ChannelRecord, effect: Effect, tip: Tip) -> None:
        txid = record.contract_txid
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
                log.info("channel %s nears its expiry: settling", txid)
                try:
                    await self.settle(txid)  # re-reads the channel after its lease
                finally:
                    await self._finish(f"settle:{txid}")
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

    async def _claim(self, duty: str, hold: float | None = None) -> bool:
        """Whether this instance does `duty` now (always, without leases)."""
        if self.leases is None:
            return True
        if await asyncio.to_thread(self.leases.claim, duty, hold):
            return True
        log.debug("%s: another instance is doing it", duty)
        return False

    def _look_again_after_takeover(self) -> None:
        """Review the due channels again once a silent claimer would count as dead."""
        assert self.leases is not None
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.leases.policy.takeover_after)
        self.scheduler.add_job(self.review_all, "date", id="takeover", replace_existing=True,
                               run_date=when, kwargs={"final": False})

    async def _finish(self, duty: str) -> None:
        if self.leases is not None:
            await asyncio.to_thread(self.leases.finish, duty)

    def chain_state(self, contract_txid: str) -> ChainState:
        return self.store.chain_state(self.role, contract_txid)



def _marked(mark: MarkChannel) -> Callable[[ChannelRecord], ChannelRecord]:
    """The record change a MarkChannel asks for: its status, and its closing tx if any."""
    def change(current: ChannelRecord) -> ChannelRecord:
        return replace(current, status=mark.status,
                       settlement_tx=current.settlement_tx if mark.closing_tx is None
                       else mark.closing_tx)
    return change
