"""The autopilot: keeps one side's stored channels safe while nobody watches.

It follows the node's blocks (BlockMonitor: ZMQ wake-ups, polling, reorgs), folds each block
into every channel's ChainState, and carries out what `channel.watch.review` decides. APScheduler
wakes it at each channel's deadline (derived from the store at start, so a restart loses none,
and one missed while the process was down fires at once), on a safety interval, and for
retries with backoff while the node refuses a refund as non-final or cannot be reached.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bitcoind_paychan.bitcoin.tx import Transaction, parse_block_transactions
from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.effects import (
    Broadcast,
    ChannelFinished,
    DiscardChannel,
    Effect,
    ForgetChannel,
    MarkChannel,
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
from bitcoind_paychan.errors import NodeError, PaychanError, TransactionRejected
from bitcoind_paychan.logcontext import about_channel
from bitcoind_paychan.node.bitcoind import AsyncBitcoind
from bitcoind_paychan.node.monitor import Block, BlockMonitor, ChainEvent
from bitcoind_paychan.store import ChannelStore

log = logging.getLogger(__name__)
MAX_BACKOFF = 600.0
# Channels whose money may still move: each block is folded into these and they are reviewed
# after it. Final ones (waiting to be buried, then forgotten or discarded) are looked at by the
# periodic review only, and by a reorg; so rows that need no more work cost nothing per block.
# A client's FAILED channel (given up before it opened) stays live: its contract may still
# confirm, and then it must be refunded. Strangers cannot create client rows.
LIVE = {Role.SERVER: (ChannelStatus.OPEN, ChannelStatus.CLOSING),
        Role.CLIENT: (ChannelStatus.OPEN, ChannelStatus.CLOSING, ChannelStatus.FAILED)}


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
    """Watches the chain for every stored channel of `role`."""

    def __init__(
        self,
        role: Role,
        wallet: AsyncBitcoind,
        store: ChannelStore,
        policy: WatchPolicy | None = None,
        *,
        settle: Callable[[str], Awaitable[object]] | None = None,
        on_event: Callable[[ChannelFinished], None] | None = None,
        zmq_endpoint: str | None = None,
        poll_interval: float = 5.0,
        review_interval: float = 60.0,
    ) -> None:
        self.role = role
        self.wallet = wallet
        self.store = store
        self.policy = policy or WatchPolicy()
        self.settle = settle
        self.on_event = on_event
        self.zmq_endpoint = zmq_endpoint
        self.poll_interval = poll_interval
        self.review_interval = review_interval
        self.scheduler = AsyncIOScheduler(timezone=dt.UTC)
        self.monitor: BlockMonitor | None = None
        self.reviews = 0
        self.reviewed_channels = 0  # how many channels the last review looked at
        self.block_channels = 0  # how many channels the last chain event was folded into
        self._lock = asyncio.Lock()
        self._new_block = asyncio.Event()
        self._backoff = 0.0
        self._meta_key = f"synced:{role.value}"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Catch up from the last processed block, then follow the chain and the deadlines."""
        synced = self.store.get_meta(self._meta_key)
        start_from = None
        if synced:
            height, block_hash = synced.split(":")
            start_from = (int(height), block_hash)
        self.monitor = BlockMonitor(self.wallet.node, self._on_chain_event,
                                    zmq_endpoint=self.zmq_endpoint,
                                    poll_interval=self.poll_interval, start_from=start_from)
        self.scheduler.start()
        self.scheduler.add_job(self.review_all, "interval", seconds=self.review_interval,
                               id="review", coalesce=True, max_instances=1)
        for record in self._live():
            self.schedule_deadline(record)
        await self.monitor.start()
        await self.review_all()

    async def stop(self) -> None:
        if self.monitor:
            await self.monitor.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def schedule_deadline(self, record: ChannelRecord) -> None:
        """A wake-up at the channel's deadline: the server's settle time, the client's refund
        time. A deadline already past fires at once."""
        deadline = record.contract.expiry
        if self.role is Role.SERVER:
            deadline -= self.policy.settle_margin
        when = dt.datetime.fromtimestamp(deadline, dt.UTC)
        self.scheduler.add_job(self.review_all, "date", run_date=when,
                               id=f"deadline:{record.contract_txid}", replace_existing=True,
                               misfire_grace_time=None, coalesce=True)

    @property
    def healthy(self) -> bool:
        """False while the node cannot be reached."""
        return self.monitor is not None and self.monitor.healthy

    def deadline_of(self, contract_txid: str) -> dt.datetime | None:
        job = self.scheduler.get_job(f"deadline:{contract_txid}")
        return job.next_run_time if job else None

    # -- chain events ----------------------------------------------------------------------

    async def _on_chain_event(self, event: ChainEvent) -> None:
        async with self._lock:
            # A reorg may undo what finished a channel: then every stored channel is looked at.
            records = self._all() if event.disconnected else self._live()
            self.block_channels = len(records)
            states = {r.contract_txid: self.store.chain_state(self.role, r.contract_txid)
                      for r in records}
            for block in event.disconnected:
                log.info("block %s at %s disconnected", block.hash, block.height)
                states = {t: revert_block(s, block.height) for t, s in states.items()}
            for block in event.connected:
                txs = await self._block_transactions(block) if records else []
                states = {r.contract_txid: apply_block(r, states[r.contract_txid], txs,
                                                       block.height) for r in records}
            for record in records:
                before = self.store.chain_state(self.role, record.contract_txid)
                if states[record.contract_txid] != before:
                    self.store.put_chain_state(self.role, record.contract_txid,
                                               states[record.contract_txid])
            tip = event.tip
            self.store.set_meta(self._meta_key, f"{tip.height}:{tip.hash}")
        self._new_block.set()
        self._new_block = asyncio.Event()
        await self.review_all(final=bool(event.disconnected))

    async def until_confirmed(self, contract_txid: str, confirmations: int) -> None:
        """Return once the contract is `confirmations` deep (at once for 0)."""
        while confirmations > 0:
            height = self.store.chain_state(self.role, contract_txid).contract_height
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
        closing = Transaction.parse(state.spender).txid_hex if state.spender else None
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

    async def _block_transactions(self, block: Block) -> list[Transaction]:
        raw = await self.wallet.run(self.wallet.node.rpc.call, "getblock", block.hash, 0)
        return parse_block_transactions(bytes.fromhex(raw))

    def _all(self) -> list[ChannelRecord]:
        return self.store.channels(self.role)

    def _live(self) -> list[ChannelRecord]:
        return self.store.channels(self.role, LIVE[self.role])

    # -- reviews ---------------------------------------------------------------------------

    async def review_all(self, final: bool = True) -> None:
        """Look at every stored channel (with `final` False: only the live ones) and act; on a
        node failure, try again with backoff."""
        async with self._lock:
            try:
                await self._review_all(final)
                self._backoff = 0.0
            except (NodeError, TransactionRejected) as exc:
                self._backoff = min(max(self._backoff * 2, 5.0), MAX_BACKOFF)
                log.warning("review failed (%s); again in %.0f s", exc, self._backoff)
                self.scheduler.add_job(self.review_all, "date", id="retry",
                                       replace_existing=True, run_date=dt.datetime.now(dt.UTC)
                                       + dt.timedelta(seconds=self._backoff))

    async def fee_rate(self) -> int:
        """The rate (sat/kvB) for a transaction built now: the node's estimate for the fee
        policy's target, clamped into its floor and cap."""
        fees = self.policy.fees
        return fees.rate(await self.wallet.fee_rate(fees.target, fees.floor))

    async def _review_all(self, final: bool) -> None:
        self.reviews += 1
        records = self._all() if final else self._live()
        self.reviewed_channels = len(records)
        if not records:
            return
        chain_tip = await self.wallet.tip()
        tip = Tip(chain_tip.height, chain_tip.median_time, chain_tip.time)
        fee_rate = await self.fee_rate()
        failure: PaychanError | None = None
        for record in records:
            try:
                await self._review(record, tip, fee_rate)
            except TransactionRejected as exc:
                failure = failure or exc
        if failure:
            raise failure

    async def _review(self, record: ChannelRecord, tip: Tip, fee_rate: int) -> None:
        txid = record.contract_txid
        state = self.store.chain_state(self.role, txid)
        if not state.spender_height and not record.status.final:
            seen = observe_mempool(state, await self.wallet.spender(txid, 0))
            state = self._observed(txid, state, seen)
        elif record.status is ChannelStatus.FAILED and not (
                state.conflict_height or state.contract_height or state.spender):
            # Failed with no chain fact to show for it (stored by an older version): are its
            # coins gone? Then it is discarded once that is buried, like any double spend.
            acceptance = await self.wallet.test_accept(Transaction.parse(record.contract_tx))
            state = self._observed(txid, state, observe_missing_inputs(
                state, acceptance.reason, tip.height))
        for effect in review(record, state, tip, fee_rate, self.policy):
            await self._carry_out(record, effect, tip)

    def _observed(self, txid: str, state: ChainState, seen: ChainState) -> ChainState:
        if seen != state:
            self.store.put_chain_state(self.role, txid, seen)
        return seen

    @about_channel
    async def _carry_out(self, record: ChannelRecord, effect: Effect, tip: Tip) -> None:
        txid = record.contract_txid
        match effect:
            case Broadcast(tx, purpose):
                try:
                    await self.wallet.broadcast(tx)
                    # Unconfirmed transactions are re-sent at every review: log those quietly.
                    level = logging.INFO if purpose in ("fee bump", "refund") else logging.DEBUG
                    log.log(level, "broadcast %s %s for channel %s", purpose, tx.txid_hex, txid)
                except TransactionRejected as exc:
                    if purpose != "contract":  # a contract already spent is no news
                        raise
                    log.debug("contract %s not taken: %s", txid, exc.reason)
                    state = self.store.chain_state(self.role, txid)
                    self._observed(txid, state,
                                   observe_missing_inputs(state, exc.reason, tip.height))
            case MarkChannel(_, status, closing_tx):
                def mark(current: ChannelRecord) -> ChannelRecord:
                    return replace(current, status=status,
                                   settlement_tx=closing_tx or current.settlement_tx)
                self.store.modify(self.role, txid, mark)
                log.info("channel %s is %s", txid, status.value)
            case StoreChainState(_, state):
                self.store.put_chain_state(self.role, txid, state)
            case SettleChannel():
                if self.settle is not None:
                    log.info("channel %s nears its expiry: settling", txid)
                    await self.settle(txid)
            case ForgetChannel() | DiscardChannel():
                if isinstance(effect, ForgetChannel):
                    self.store.forget(self.role, txid)
                    log.info("channel %s closed and buried: forgotten (its summary and "
                             "payments stay in the history)", txid)
                else:
                    self.store.discard(self.role, txid)
                    log.info("channel %s never made it on chain: discarded", txid)
                job = self.scheduler.get_job(f"deadline:{txid}")
                if job:
                    job.remove()
            case ChannelFinished():
                if self.on_event:
                    self.on_event(effect)

    def chain_state(self, contract_txid: str) -> ChainState:
        return self.store.chain_state(self.role, contract_txid)

