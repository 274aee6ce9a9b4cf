"""The block monitor: which blocks joined and left bitcoind's best chain, in order.

`ChainTracker` is the reorg logic without any I/O; `BlockMonitor` runs it against a chain
source (`node.ports.ChainSource`, e.g. `AsyncBitcoind`) under asyncio, woken by ZMQ
(`hashblock`/`sequence`) and by a poll timer. ZMQ messages are only wake-ups (they can be
lost); the chain source is the source of truth. It also hands the transactions of `rawtx`
messages (those entering the mempool, and a connected block's) to a callback, so a watcher can
look at mempool spends at once instead of at its next periodic review.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import zmq
import zmq.asyncio

from bitcoind_paychan.errors import NodeError
from bitcoind_paychan.node.bitcoind import Block
from bitcoind_paychan.node.ports import ChainSource

logger = logging.getLogger(__name__)

ZMQ_TOPICS = (b"hashblock", b"sequence")
RAWTX = b"rawtx"
YIELD_EVERY = 32  # rawtx messages handled per event-loop step (a block brings thousands)
_T = TypeVar("_T")


@dataclass(frozen=True)
class ChainEvent:
    """A change of the best chain: `disconnected` blocks (highest first) left it, then
    `connected` blocks (lowest first) joined it; `tip` is the tracked tip afterwards."""

    disconnected: tuple[Block, ...]
    connected: tuple[Block, ...]
    tip: Block


class ChainTracker:
    """Reorg logic without I/O: follows the best chain through `advance` calls.

    It holds the best chain's last `window` blocks (by height). `advance` walks back from the
    node's tip (through `header_lookup`) to the fork point with its own chain, and reports its
    blocks above the fork as disconnected and the new ones as connected. Forks up to `window`
    blocks below its tip are resolved (headers of its own chain it does not hold, e.g. just
    after the first call, are looked up too).

    - First call without a `start`: the tip alone is reported, as connected.
    - Fork deeper than the window (or another chain): the tracker starts over from the tip;
      the event disconnects its blocks in the window and connects the tip alone (blocks
      between the fork and the new tip are not reported).
    - With `start=(height, hash)` (the last block the caller processed): the first advance
      connects every block after it; if it has left the best chain, it and its ancestors down
      to the fork are reported as disconnected (however deep).
    - An event connects at most `max_catch_up` blocks; when more are due, the event's `tip` is
      not yet the node's, and calling `advance` again with the same hash delivers the next
      ones, in order, until it returns None.

    Exceptions raised by `header_lookup` propagate and leave the tracker unchanged.
    """

    def __init__(
        self, window: int = 144, *, start: tuple[int, str] | None = None, max_catch_up: int = 1000
    ) -> None:
        if window < 1 or max_catch_up < 1:
            raise ValueError("window and max_catch_up must be at least 1")
        self.window = window
        self.max_catch_up = max_catch_up
        self._start = start
        self._tip: Block | None = None
        self._by_height: dict[int, Block] = {}
        self._by_hash: dict[str, Block] = {}

    @property
    def tip(self) -> Block | None:
        """The last block reported (None before the first event)."""
        return self._tip

    @property
    def floor(self) -> int | None:
        """The lowest height at which a fork can still be resolved (None before the first
        event without a start point)."""
        if self._tip is not None:
            return max(0, self._tip.height - self.window + 1)
        return self._start[0] if self._start else None

    def knows(self, block_hash: str) -> bool:
        """Is this block in the window (so `advance` needs no header for it)?"""
        return block_hash in self._by_hash

    def copy(self) -> ChainTracker:
        """An independent copy (to roll back to if an event could not be handled)."""
        other = copy.copy(self)
        other._by_height = dict(self._by_height)
        other._by_hash = dict(self._by_hash)
        return other

    def advance(self, tip_hash: str, header_lookup: Callable[[str], Block]) -> ChainEvent | None:
        """Move to the node's best block `tip_hash`; the change, or None if there is none."""
        if self._tip is not None and tip_hash == self._tip.hash:
            return None
        new_tip = self._block(tip_hash, header_lookup)
        if self._tip is None and self._start is None:
            self._commit(new_tip, (new_tip,))
            return ChainEvent((), (new_tip,), new_tip)
        fork, gone, came = self._find_fork(new_tip, header_lookup)
        if fork is None:  # out of reach: start over from the tip
            self._by_height.clear()
            self._by_hash.clear()
            self._commit(new_tip, (new_tip,))
            return ChainEvent(tuple(gone), (new_tip,), new_tip)
        connected = tuple(came[: self.max_catch_up])
        for block in gone:
            self._by_height.pop(block.height, None)
            self._by_hash.pop(block.hash, None)
        self._commit(fork, connected)
        if not gone and not connected:
            return None
        assert self._tip is not None
        return ChainEvent(tuple(gone), connected, self._tip)

    def _block(self, block_hash: str, header_lookup: Callable[[str], Block]) -> Block:
        return self._by_hash.get(block_hash) or header_lookup(block_hash)

    def _find_fork(
        self, new: Block, header_lookup: Callable[[str], Block]
    ) -> tuple[Block | None, list[Block], list[Block]]:
        """(fork point, our blocks above it highest first, new blocks lowest first); the
        fork is None if it is out of reach (below the window, or another genesis)."""
        if self._tip is not None:
            old_height, old_hash = self._tip.height, self._tip.hash
            lowest = self._tip.height - self.window + 1
        else:
            assert self._start is not None
            old_height, old_hash = self._start
            lowest = 0  # a start point's own chain is followed all the way down
        gone: list[Block] = []
        came: list[Block] = []
        while new.hash != old_hash:
            if new.height >= old_height:
                if new.height == 0:
                    return None, gone, came
                came.append(new)
                new = self._block(new.prev_hash, header_lookup)
            else:
                if old_height < lowest or old_height < 0:
                    return None, gone, came
                old = self._block(old_hash, header_lookup)
                gone.append(old)
                old_height, old_hash = old.height - 1, old.prev_hash
        came.reverse()
        return new, gone, came

    def _commit(self, fork: Block, connected: tuple[Block, ...]) -> None:
        self._start = None
        for block in (fork, *connected):
            self._by_height[block.height] = block
            self._by_hash[block.hash] = block
        self._tip = connected[-1] if connected else fork
        for height in [h for h in self._by_height if h <= self._tip.height - self.window]:
            del self._by_hash[self._by_height.pop(height).hash]


class _MissingHeader(Exception):
    def __init__(self, block_hash: str) -> None:
        super().__init__(block_hash)
        self.block_hash = block_hash


class BlockMonitor:
    """Delivers `ChainEvent`s of a chain source to `on_event`, one at a time and in order.

    It checks the node on every ZMQ `hashblock`/`sequence` block message (if `zmq_endpoint` is
    given) and at least every `poll_interval` seconds. With `on_transaction` it also
    subscribes to `rawtx` there and passes each serialized transaction to it (it must be
    quick and not raise; lost messages are not noticed). The source is asked on the loop (an
`AsyncBitcoind` runs its RPC in worker threads). While the
    node cannot be reached it logs once, reports `healthy` False, retries with a backoff up to
    `poll_interval` and catches up when the node is back. If `on_event` raises, the tracker
    is rolled back and the same event is delivered again on the next check (at least once).
    `start_from` is the last block the caller processed, see `ChainTracker`.
    """

    def __init__(
        self,
        node: ChainSource,
        on_event: Callable[[ChainEvent], Awaitable[None]],
        *,
        zmq_endpoint: str | None = None,
        poll_interval: float = 5.0,
        start_from: tuple[int, str] | None = None,
        window: int = 144,
        max_catch_up: int = 1000,
        on_transaction: Callable[[bytes], None] | None = None,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self._node = node
        self._on_event = on_event
        self._on_transaction = on_transaction
        self._zmq_endpoint = zmq_endpoint
        self._poll_interval = poll_interval
        self._tracker = ChainTracker(window, start=start_from, max_catch_up=max_catch_up)
        self._headers: dict[str, Block] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._healthy = False
        self._outage_logged = False
        self._last_error: BaseException | None = None
        self._node_error: NodeError | None = None
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._context: zmq.asyncio.Context | None = None
        self._socket: zmq.asyncio.Socket | None = None

    @property
    def tip(self) -> Block | None:
        """The last block delivered (None before the first event)."""
        return self._tracker.tip

    @property
    def healthy(self) -> bool:
        """Did the last RPC call to the node succeed? (False before the first one.)"""
        return self._healthy

    @property
    def last_error(self) -> BaseException | None:
        """The most recent error (node or `on_event`); kept after recovery."""
        return self._last_error

    @property
    def running(self) -> bool:
        """Is the background loop alive?"""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Subscribe to ZMQ (if configured) and start checking the node in the background."""
        if self._task is not None:
            raise RuntimeError("the block monitor was already started")
        if self._zmq_endpoint:
            context = zmq.asyncio.Context()
            sock = context.socket(zmq.SUB)
            try:
                sock.setsockopt(zmq.LINGER, 0)
                for topic in (*ZMQ_TOPICS, *([RAWTX] if self._on_transaction else [])):
                    sock.setsockopt(zmq.SUBSCRIBE, topic)
                sock.connect(self._zmq_endpoint)
            except zmq.ZMQError:
                sock.close(linger=0)
                context.term()
                raise
            self._context, self._socket = context, sock
            self._listener = asyncio.create_task(self._listen(sock), name="block-monitor-zmq")
        self._task = asyncio.create_task(self._run(), name="block-monitor")

    async def stop(self) -> None:
        """Cancel the background work and close the ZMQ socket; safe to call twice."""
        tasks = [t for t in (self._task, self._listener) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        others = [t for t in tasks if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others)
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._context is not None:
            self._context.term()
            self._context = None

    async def sync(self) -> Block:
        """Check the node now, deliver any events; the tip. Raises NodeError if the node
        cannot be reached, and whatever `on_event` raises."""
        async with self._lock:
            try:
                tip_hash = await self._call(self._poll())
                while True:
                    before = self._tracker.copy()
                    event = await self._next_event(tip_hash)
                    if event is None:
                        break
                    try:
                        await self._on_event(event)
                    except BaseException as exc:
                        self._tracker = before  # not handled: deliver it again next time
                        if isinstance(exc, Exception):
                            self._last_error = exc
                        raise
            finally:
                self._headers.clear()
            if self._outage_logged:
                self._outage_logged = False
                logger.info("block monitor: bitcoind is back")
            tip = self._tracker.tip
            assert tip is not None
            return tip

    async def _next_event(self, tip_hash: str) -> ChainEvent | None:
        """Advance the tracker, fetching any header it lacks."""
        while True:
            try:
                return self._tracker.advance(tip_hash, self._lookup)
            except _MissingHeader as missing:
                await self._call(self._fetch_headers(missing.block_hash, -1, 32))

    def _lookup(self, block_hash: str) -> Block:
        try:
            return self._headers[block_hash]
        except KeyError:
            raise _MissingHeader(block_hash) from None

    async def _poll(self) -> str:
        """The best block hash, with the headers from it down to what the tracker knows
        prefetched."""
        tip_hash = await self._node.best_block_hash()
        floor = self._tracker.floor
        await self._fetch_headers(tip_hash, math.inf if floor is None else floor, None)
        return tip_hash

    async def _fetch_headers(self, block_hash: str, stop_height: float, limit: int | None
                             ) -> None:
        """Headers from `block_hash` back into the cache, until one is known or cached, after
        one at or below `stop_height`, or after `limit` of them."""
        fetched = 0
        while block_hash not in self._headers and not self._tracker.knows(block_hash):
            block = await self._node.block_header(block_hash)
            self._headers[block_hash] = block
            fetched += 1
            if block.height <= stop_height or block.height == 0 or fetched == limit:
                return
            block_hash = block.prev_hash

    async def _call(self, asking: Awaitable[_T]) -> _T:
        try:
            result = await asking
        except NodeError as exc:
            self._last_error = self._node_error = exc
            self._healthy = False
            if not self._outage_logged:
                self._outage_logged = True
                logger.warning("block monitor: bitcoind unavailable (%s); retrying", exc)
            raise
        self._healthy = True
        return result

    async def _run(self) -> None:
        first_backoff = min(0.25, self._poll_interval)
        backoff = first_backoff
        while True:
            self._wake.clear()
            try:
                await self.sync()
                delay, backoff = self._poll_interval, first_backoff
            except Exception as exc:
                if exc is self._node_error:  # already logged
                    delay, backoff = backoff, min(backoff * 2, self._poll_interval)
                else:
                    logger.exception("block monitor: handling a chain event failed; will retry")
                    delay = self._poll_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _listen(self, sock: zmq.asyncio.Socket) -> None:
        """Set the wake-up flag on every block message; hand `rawtx` bodies on (other mempool
        messages are ignored)."""
        handled = 0
        while True:
            try:
                frames = await sock.recv_multipart()
            except zmq.ZMQError as exc:
                logger.warning("block monitor: ZMQ receive failed (%s); polling meanwhile", exc)
                await asyncio.sleep(self._poll_interval)
                continue
            topic = frames[0] if frames else b""
            body = frames[1] if len(frames) > 1 else b""
            if topic == b"hashblock" or (topic == b"sequence" and body[32:33] in (b"C", b"D")):
                self._wake.set()
            elif topic == RAWTX and self._on_transaction is not None:
                self._on_transaction(body)
                handled += 1
                if handled % YIELD_EVERY == 0:  # queued messages need no wait: yield
                    await asyncio.sleep(0)
