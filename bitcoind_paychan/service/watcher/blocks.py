"""Blocks folded into the channels they touch: each connected block fetched and
scanned once against the index off the event loop, the touched channels loaded, folded
(`watch.apply_block`) and stored with the new sync point; a disconnected block undone; a
mempool transaction spending a watched outpoint reviewed at once (a mixin of ChainWatcher)."""

from __future__ import annotations

import asyncio
import logging

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.records import ChannelRecord
from bitcoind_paychan.channel.watch import (
    apply_block,
    revert_block,
)
from bitcoind_paychan.errors import DecodeError
from bitcoind_paychan.node.bitcoind import Block
from bitcoind_paychan.node.monitor import BlockMonitor, ChainEvent
from bitcoind_paychan.node.ports import ChainSource
from bitcoind_paychan.service.watcher.channels import SLICE
from bitcoind_paychan.service.watcher.review import ReviewPipeline

# The "watcher" subsystem's lines (daemon/logs.py), as before the watcher had its package.
log = logging.getLogger("bitcoind_paychan.service.watcher")


class BlockFolding(ReviewPipeline):
    """The chain's events into the channels."""

    chain: ChainSource
    monitor: BlockMonitor | None
    block_channels: int
    _meta_key: str
    _new_block: asyncio.Event
    _mempool_touched: set[str]
    _mempool_review: asyncio.Task[None] | None

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
