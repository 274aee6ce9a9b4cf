"""Which channels the autopilot watches, and its store access: the index kept
from the store (rebuilt at start, learnt from other instances, a channel added when
stored), records and chain states read and written SLICE channels per store call (a mixin
of ChainWatcher)."""

from __future__ import annotations

import asyncio

from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.service.watcher.schedule import WatchSchedule
from bitcoind_paychan.store import ChannelStore
from bitcoind_paychan.store.base import WatchedChannel

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


class WatchedChannels(WatchSchedule):
    """The watched channels: the index, and the store read and written in slices."""

    store: ChannelStore

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
                       self._deadline(channel.expiry) if open_ else None, channel.contract_tx,
                       channel.current_txid, channel.reanchor_tx)

    def watch(self, record: ChannelRecord, state: ChainState | None = None) -> None:
        """Watch a channel (call it once the record is stored, before its contract can be
        broadcast): its contract, the contract's inputs until it confirms, its deadline."""
        if record.status not in LIVE[self.role] and state is None:
            return
        unconfirmed = state is None or not state.contract_height
        self.index.add(record.channel_id, record.contract.outpoint.index,
                       self._deadline(record.contract.expiry)
                       if record.status is ChannelStatus.OPEN else None,
                       record.contract_tx if unconfirmed else None,
                       record.contract_txid if record.generation else "",
                       record.pending.tx if record.pending else None)
        if self.scheduler.running:
            self._arm(self._armed_after)

    def watch_reanchor(self, record: ChannelRecord) -> None:
        """A re-anchor R of the channel was stored: its wallet inputs are watched too (a
        spend of one elsewhere kills R), the rest as it was."""
        unconfirmed = record.channel_id in self.index.unconfirmed
        self.index.add(record.channel_id, record.contract.outpoint.index,
                       self.index.deadline(record.channel_id),
                       record.contract_tx if unconfirmed else None,
                       record.contract_txid if record.generation else "",
                       record.pending.tx if record.pending else None)

    def schedule_deadline(self, record: ChannelRecord) -> None:
        """Watch the channel; the wake-up moves to its deadline if that is the earliest."""
        if record.channel_id not in self.index:
            self.watch(record)

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

    def chain_state(self, contract_txid: str) -> ChainState:
        return self.store.chain_state(self.role, contract_txid)
