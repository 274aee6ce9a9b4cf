"""ChainWatcher: the autopilot of one role, its parts mixed in (blocks.py, review.py,
channels.py, schedule.py, duties.py): built, attached, started and stopped here."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.effects import ReanchorEnded
from bitcoind_paychan.channel.records import ChannelRecord, Role
from bitcoind_paychan.channel.watch import WatchPolicy
from bitcoind_paychan.errors import InvalidParameter
from bitcoind_paychan.node.monitor import BlockMonitor
from bitcoind_paychan.node.ports import (
    Node,
    NodePorts,
)
from bitcoind_paychan.service.callbacks import Callbacks
from bitcoind_paychan.service.watcher.blocks import BlockFolding
from bitcoind_paychan.service.watcher.review import WatchEvent
from bitcoind_paychan.service.watcher.view import ChannelView
from bitcoind_paychan.service.watchindex import WatchIndex
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.store.leases import Leases

# The "watcher" subsystem's lines (daemon/logs.py), as before the watcher had its package.
log = logging.getLogger("bitcoind_paychan.service.watcher")


class ChainWatcher(BlockFolding):
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
        self.promote: Callable[[str], Awaitable[ChannelRecord | None]] | None = None
        self.promote_depth = 1  # a re-anchor's confirmations before its promotion
        # Told a re-anchor that can never confirm (client: its wallet coins go back).
        self.reanchor_ended: Callable[[ReanchorEnded], Awaitable[None]] | None = None
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

    async def stop(self) -> None:
        if self.monitor:
            await self.monitor.stop()
        if self._mempool_review is not None:
            self._mempool_review.cancel()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    @property
    def healthy(self) -> bool:
        """False while the node cannot be reached."""
        return self.monitor is not None and self.monitor.healthy

    def view(self, record: ChannelRecord) -> ChannelView:
        """What a person watching this channel wants to know."""
        state = self.store.chain_state(self.role, record.channel_id)
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
            role=self.role.value, contract_txid=record.channel_id, version=record.version,
            status=record.status.value, value=record.value, paid=record.paid,
            change=record.change, payments=record.payments, peer=record.peer,
            expiry=record.contract.expiry, deadline=deadline,
            contract_confirmations=tip - state.contract_height + 1 if state.contract_height
            else 0,
            closing_txid=closing,
            closing_confirmations=tip - state.spender_height + 1 if state.spender_height
            else 0,
        )
