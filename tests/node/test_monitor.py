"""The block monitor: ChainTracker on made-up headers, BlockMonitor against real regtest nodes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.errors import NodeError
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind
from bitcoind_paychan.node.bitcoind import NO_PARENT, Block
from bitcoind_paychan.node.monitor import BlockMonitor, ChainEvent, ChainTracker
from regtest.node import RegtestNode
from regtest.waiting import until, wait_until
from tests.conftest import config_for

T = TypeVar("T")

# -- ChainTracker on made-up headers --------------------------------------------------------


def grow(headers: dict[str, Block], parent: Block | None, count: int, tag: str) -> list[Block]:
    """`count` blocks on top of `parent` (from genesis if None), recorded in `headers`."""
    blocks = []
    for _ in range(count):
        height = parent.height + 1 if parent else 0
        block = Block(
            height,
            f"{tag}{height}",
            parent.hash if parent else NO_PARENT,
            1_600_000_000 + 600 * height,
            1_600_000_000 + 600 * height - 3000,
        )
        headers[block.hash] = block
        blocks.append(block)
        parent = block
    return blocks


@pytest.fixture
def headers() -> dict[str, Block]:
    return {}


@pytest.fixture
def main(headers: dict[str, Block]) -> list[Block]:
    """Blocks 0..10 of the main chain: main[h] is at height h."""
    return grow(headers, None, 11, "m")


def test_first_advance_reports_the_tip_only(headers: dict[str, Block], main: list[Block]) -> None:
    tracker = ChainTracker()
    assert tracker.tip is None
    assert tracker.advance(main[10].hash, headers.__getitem__) == ChainEvent(
        (), (main[10],), main[10]
    )
    assert tracker.advance(main[10].hash, headers.__getitem__) is None
    assert tracker.tip == main[10]


def test_new_blocks_are_connected_lowest_first(
    headers: dict[str, Block], main: list[Block]
) -> None:
    tracker = ChainTracker()
    tracker.advance(main[5].hash, headers.__getitem__)
    event = tracker.advance(main[10].hash, headers.__getitem__)
    assert event == ChainEvent((), tuple(main[6:11]), main[10])


def test_reorg_and_back(headers: dict[str, Block], main: list[Block]) -> None:
    branch = grow(headers, main[7], 4, "b")  # heights 8..11
    tracker = ChainTracker()
    tracker.advance(main[10].hash, headers.__getitem__)
    event = tracker.advance(branch[-1].hash, headers.__getitem__)
    assert event == ChainEvent((main[10], main[9], main[8]), tuple(branch), branch[-1])
    more = grow(headers, main[10], 2, "m")  # main grows to 12 and wins again
    event = tracker.advance(more[-1].hash, headers.__getitem__)
    assert event is not None
    assert event.disconnected == tuple(reversed(branch))
    assert event.connected == (main[8], main[9], main[10], *more)


def test_tip_moving_back_only_disconnects(headers: dict[str, Block], main: list[Block]) -> None:
    tracker = ChainTracker()
    tracker.advance(main[10].hash, headers.__getitem__)
    event = tracker.advance(main[7].hash, headers.__getitem__)
    assert event == ChainEvent((main[10], main[9], main[8]), (), main[7])


def test_fork_deeper_than_the_window_starts_over(
    headers: dict[str, Block], main: list[Block]
) -> None:
    branch = grow(headers, main[5], 7, "b")  # heights 6..12
    tracker = ChainTracker(window=3)
    tracker.advance(main[8].hash, headers.__getitem__)
    tracker.advance(main[10].hash, headers.__getitem__)
    assert tracker.floor == 8
    event = tracker.advance(branch[-1].hash, headers.__getitem__)
    assert event == ChainEvent((main[10], main[9], main[8]), (branch[-1],), branch[-1])
    (nxt,) = grow(headers, branch[-1], 1, "b")
    assert tracker.advance(nxt.hash, headers.__getitem__) == ChainEvent((), (nxt,), nxt)


def test_fork_just_below_the_window_is_still_found(
    headers: dict[str, Block], main: list[Block]
) -> None:
    branch = grow(headers, main[7], 4, "b")  # forks at 7, the window holds 8..10
    tracker = ChainTracker(window=3)
    tracker.advance(main[8].hash, headers.__getitem__)
    tracker.advance(main[10].hash, headers.__getitem__)
    event = tracker.advance(branch[-1].hash, headers.__getitem__)
    assert event == ChainEvent((main[10], main[9], main[8]), tuple(branch), branch[-1])


def test_catch_up_from_a_start_point(headers: dict[str, Block], main: list[Block]) -> None:
    tracker = ChainTracker(start=(3, main[3].hash))
    assert tracker.floor == 3
    event = tracker.advance(main[10].hash, headers.__getitem__)
    assert event == ChainEvent((), tuple(main[4:]), main[10])


def test_catch_up_comes_in_bounded_events_in_order(headers: dict[str, Block]) -> None:
    chain = grow(headers, None, 2501, "m")
    tracker = ChainTracker(start=(0, chain[0].hash), max_catch_up=1000)
    connected: list[Block] = []
    sizes = []
    while (event := tracker.advance(chain[-1].hash, headers.__getitem__)) is not None:
        assert event.tip == event.connected[-1]
        sizes.append(len(event.connected))
        connected += event.connected
    assert sizes == [1000, 1000, 500]
    assert connected == chain[1:]


def test_start_point_at_the_tip_reports_nothing(
    headers: dict[str, Block], main: list[Block]
) -> None:
    tracker = ChainTracker(start=(10, main[10].hash))
    assert tracker.advance(main[10].hash, headers.__getitem__) is None
    assert tracker.tip == main[10]


def test_start_point_reorged_out_is_disconnected(
    headers: dict[str, Block], main: list[Block]
) -> None:
    branch = grow(headers, main[6], 6, "b")  # heights 7..12
    tracker = ChainTracker(start=(9, main[9].hash))
    event = tracker.advance(branch[-1].hash, headers.__getitem__)
    assert event == ChainEvent((main[9], main[8], main[7]), tuple(branch), branch[-1])


def test_start_point_above_the_node_tip(headers: dict[str, Block], main: list[Block]) -> None:
    tracker = ChainTracker(start=(10, main[10].hash))
    event = tracker.advance(main[8].hash, headers.__getitem__)
    assert event == ChainEvent((main[10], main[9]), (), main[8])


def test_window_is_bounded(headers: dict[str, Block], main: list[Block]) -> None:
    tracker = ChainTracker(window=4)
    for block in main:
        tracker.advance(block.hash, headers.__getitem__)
    assert tracker.floor == 7
    assert tracker.knows(main[7].hash) and not tracker.knows(main[6].hash)


def test_a_failing_lookup_leaves_the_tracker_unchanged(
    headers: dict[str, Block], main: list[Block]
) -> None:
    branch = grow(headers, main[7], 4, "b")
    tracker = ChainTracker()
    tracker.advance(main[10].hash, headers.__getitem__)

    def flaky(block_hash: str) -> Block:
        if block_hash == branch[0].hash:
            raise KeyError(block_hash)
        return headers[block_hash]

    with pytest.raises(KeyError):
        tracker.advance(branch[-1].hash, flaky)
    assert tracker.tip == main[10]
    event = tracker.advance(branch[-1].hash, headers.__getitem__)
    assert event == ChainEvent((main[10], main[9], main[8]), tuple(branch), branch[-1])


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        ChainTracker(window=0)
    with pytest.raises(ValueError):
        ChainTracker(max_catch_up=0)


# -- BlockMonitor against regtest nodes ------------------------------------------------------


@pytest.fixture
def chain_node() -> Iterator[RegtestNode]:
    """A regtest node publishing ZMQ block notifications, with a short chain."""
    with RegtestNode(zmq=True) as started:
        started.mine(5)
        yield started


@dataclass
class Running:
    """A BlockMonitor on an event loop in a background thread, so the test itself can block."""

    monitor: BlockMonitor
    loop: asyncio.AbstractEventLoop
    events: list[ChainEvent] = field(default_factory=list)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def connected(self) -> list[str]:
        return [b.hash for event in list(self.events) for b in event.connected]

    def wait_for(self, hashes: list[str], timeout: float = 15.0) -> None:
        """Until the last connected blocks delivered are `hashes`."""
        wait_until(lambda: self.connected()[-len(hashes) :] == hashes, timeout, what=str(hashes))

    def delivers(self, node: RegtestNode, timeout: float = 2.0) -> bool:
        """Mine a block: is it delivered within `timeout`? (A SUB socket misses what is
        published while it subscribes: with a long poll interval, only ZMQ delivers at once.)"""
        try:
            self.wait_for(node.mine(1), timeout)
        except TimeoutError:
            return False
        return True


def seen_anew(seen: list[BaseException], error: BaseException | None) -> int:
    """Keep `error` if it is not one of `seen` (by identity); how many are kept."""
    if error is not None and not any(error is e for e in seen):
        seen.append(error)
    return len(seen)


@contextlib.contextmanager
def running(node: RegtestNode, *, zmq: bool = False, **kwargs: Any) -> Iterator[Running]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    events: list[ChainEvent] = []

    async def on_event(event: ChainEvent) -> None:
        events.append(event)

    async def create() -> BlockMonitor:
        monitor = BlockMonitor(
            AsyncBitcoind(Bitcoind(config_for(node))),
            on_event,
            zmq_endpoint=node.zmq_endpoint if zmq else None,
            **kwargs,
        )
        await monitor.start()
        return monitor

    async def leftover_tasks() -> set[asyncio.Task[Any]]:
        return asyncio.all_tasks() - {asyncio.current_task()}

    runner = Running(asyncio.run_coroutine_threadsafe(create(), loop).result(60), loop, events)
    try:
        yield runner
    finally:
        runner.call(runner.monitor.stop())
        leftover = runner.call(leftover_tasks())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    assert not leftover


def node_chain(node: RegtestNode, low: int, high: int) -> list[str]:
    return [str(node.rpc("getblockhash", h)) for h in range(low, high + 1)]


def test_mined_blocks_are_delivered_in_order_by_polling(chain_node: RegtestNode) -> None:
    height, tip = chain_node.tip()
    with running(chain_node, poll_interval=0.2) as run:
        run.wait_for([tip])
        assert run.events[0] == ChainEvent((), (run.events[0].tip,), run.events[0].tip)
        first = run.events[0].tip
        header = chain_node.rpc("getblockheader", tip)
        assert (first.height, first.prev_hash, first.time, first.median_time) == (
            height,
            header["previousblockhash"],
            header["time"],
            header["mediantime"],
        )
        mined = chain_node.mine(4)
        run.wait_for(mined)
        mined += chain_node.mine(3)
        run.wait_for(mined)
        assert run.connected() == [tip, *mined]
        assert all(not event.disconnected for event in run.events)
        heights = [b.height for event in run.events for b in event.connected]
        assert heights == list(range(height, height + 8))
        assert run.monitor.tip is not None and run.monitor.tip.hash == mined[-1]
        assert run.monitor.healthy


def test_reorg_and_reconsider(chain_node: RegtestNode) -> None:
    chain_node.mine(5)
    height, _ = chain_node.tip()
    old = node_chain(chain_node, height - 2, height)
    with running(chain_node, poll_interval=60) as run:
        run.call(run.monitor.sync())
        start = len(run.events)
        chain_node.invalidate(old[0])
        new = chain_node.mine(4)
        tip = run.call(run.monitor.sync())
        assert tip.hash == new[-1] and tip.height == height + 1
        (event,) = run.events[start:]
        assert [b.hash for b in event.disconnected] == old[::-1]
        assert [b.height for b in event.disconnected] == [height, height - 1, height - 2]
        assert [b.hash for b in event.connected] == new
        assert event.connected[0].prev_hash == str(chain_node.rpc("getblockhash", height - 3))

        # Back: the old branch has less work, so the new one must be invalidated as well.
        chain_node.invalidate(new[0])
        chain_node.reconsider(old[0])
        assert run.call(run.monitor.sync()).hash == old[-1]
        (back,) = run.events[start + 1 :]
        assert [b.hash for b in back.disconnected] == new[::-1]
        assert [b.hash for b in back.connected] == old
        assert run.call(run.monitor.sync()).hash == old[-1]
        assert len(run.events) == start + 2


def test_zmq_wakes_the_monitor_promptly(chain_node: RegtestNode) -> None:
    _, tip = chain_node.tip()
    with running(chain_node, zmq=True, poll_interval=60) as run:
        run.wait_for([tip])
        wait_until(lambda: run.delivers(chain_node), 30, what="the SUB socket to subscribe")
        for _ in range(3):
            mined = chain_node.mine(1)
            run.wait_for(mined, timeout=10)  # far below the 60 s poll


def test_node_outage_and_recovery(
    chain_node: RegtestNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bitcoind_paychan.node.monitor")
    _, tip = chain_node.tip()
    with running(chain_node, zmq=True, poll_interval=1.0) as run:
        run.wait_for([tip])
        assert run.monitor.healthy
        chain_node.stop()
        wait_until(lambda: not run.monitor.healthy, 10, what="monitor to notice the outage")
        failures: list[BaseException] = []  # each retry fails with a new error
        wait_until(lambda: seen_anew(failures, run.monitor.last_error) >= 3, 10,
                   what="several failed retries")
        assert run.monitor.running
        assert isinstance(run.monitor.last_error, NodeError)
        chain_node.start(same_ports=True)  # a new cookie
        mined = chain_node.mine(3)
        run.wait_for(mined)
        wait_until(lambda: run.monitor.healthy, 10, what="monitor to be healthy again")
        assert run.connected() == [tip, *mined]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unavailable" in warnings[0].getMessage()
    assert any("back" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_monitor_catches_up_from_a_start_point(chain_node: RegtestNode) -> None:
    chain_node.mine(5)
    height, _ = chain_node.tip()
    expected = node_chain(chain_node, height - 6, height)
    start = (height - 7, str(chain_node.rpc("getblockhash", height - 7)))
    with running(chain_node, poll_interval=60, start_from=start, max_catch_up=3) as run:
        run.wait_for(expected)
        assert [len(e.connected) for e in run.events] == [3, 3, 1]
        assert run.connected() == expected
        assert all(not e.disconnected for e in run.events)


def test_monitor_start_point_reorged_out(chain_node: RegtestNode) -> None:
    height, tip = chain_node.tip()
    below = str(chain_node.rpc("getblockhash", height - 1))
    chain_node.invalidate(below)
    new = chain_node.mine(3)
    with running(chain_node, poll_interval=60, start_from=(height, tip)) as run:
        run.wait_for(new)
        (event,) = run.events
        assert [(b.height, b.hash) for b in event.disconnected] == [
            (height, tip),
            (height - 1, below),
        ]
        assert [b.hash for b in event.connected] == new


def test_a_failing_handler_gets_the_same_event_again(chain_node: RegtestNode) -> None:
    async def scenario() -> None:
        delivered: list[ChainEvent] = []
        fail = False

        async def on_event(event: ChainEvent) -> None:
            if fail:
                raise RuntimeError("handler failed")
            delivered.append(event)

        monitor = BlockMonitor(AsyncBitcoind(Bitcoind(config_for(chain_node))), on_event)  # sync()
        await monitor.sync()
        mined = await asyncio.to_thread(chain_node.mine, 2)
        fail = True
        with pytest.raises(RuntimeError):
            await monitor.sync()
        assert isinstance(monitor.last_error, RuntimeError)
        assert monitor.tip == delivered[0].tip
        fail = False
        assert (await monitor.sync()).hash == mined[-1]
        assert [b.hash for b in delivered[1].connected] == mined
        assert len(delivered) == 2

    asyncio.run(scenario())


def test_background_delivery_is_serial_and_stops_cleanly(chain_node: RegtestNode) -> None:
    async def scenario() -> tuple[list[ChainEvent], int, bool]:
        delivered: list[ChainEvent] = []
        active = peak = 0
        failed = False

        async def on_event(event: ChainEvent) -> None:
            nonlocal active, peak, failed
            active += 1
            peak = max(peak, active)
            try:
                await asyncio.sleep(0.05)
                if delivered and not failed:
                    failed = True
                    raise RuntimeError("handler failed once")
                delivered.append(event)
            finally:
                active -= 1

        monitor = BlockMonitor(
            AsyncBitcoind(Bitcoind(config_for(chain_node))),
            on_event,
            zmq_endpoint=chain_node.zmq_endpoint,
            poll_interval=0.2,
        )
        await monitor.start()
        for _ in range(4):
            await asyncio.to_thread(chain_node.mine, 1)
            with contextlib.suppress(RuntimeError):
                await asyncio.gather(monitor.sync(), monitor.sync())
        best = await asyncio.to_thread(chain_node.tip)
        await until(lambda: delivered and delivered[-1].tip.hash == best[1], 15,
                    what="the best block delivered")
        await monitor.stop()
        await monitor.stop()
        pending = asyncio.all_tasks() - {asyncio.current_task()}
        return delivered, peak, not pending and not monitor.running

    delivered, peak, clean = asyncio.run(scenario())
    assert peak == 1 and clean
    hashes = [b.hash for event in delivered for b in event.connected]
    assert hashes == node_chain(chain_node, delivered[0].tip.height, chain_node.tip()[0])


def test_zmq_rawtx_messages_are_handed_to_the_transaction_callback(
        chain_node: RegtestNode) -> None:
    """With `on_transaction`, the monitor subscribes to `rawtx` as well and hands on each
    transaction the node publishes (here a new block's coinbase), between its block wake-ups."""
    seen: list[bytes] = []
    coinbases: set[str] = set()

    def seen_coinbase() -> bool:
        return bool(coinbases & {Transaction.parse(raw).txid_hex for raw in list(seen)})

    def mine_until_seen() -> bool:  # (a SUB socket misses what is sent while it subscribes)
        (mined,) = chain_node.mine(1)
        coinbases.add(chain_node.rpc("getblock", mined)["tx"][0])
        with contextlib.suppress(TimeoutError):
            wait_until(seen_coinbase, 2, what="the coinbase as rawtx")
        return seen_coinbase()

    _, tip = chain_node.tip()
    with running(chain_node, zmq=True, poll_interval=60, on_transaction=seen.append) as run:
        run.wait_for([tip])
        wait_until(mine_until_seen, 20, what="a new block's coinbase as rawtx")
