"""Many stored channels: one deadline wake-up, not a job per channel; enough file descriptors
(on the in-process chain)."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import resource
import time
from dataclasses import replace

import pytest

from bitcoind_paychan.channel.chainstate import ChainState
from bitcoind_paychan.channel.records import ChannelStatus, Role
from regtest.stranger import failed_row
from tests.service.conftest import FAST, MemSides

STORED = 50


@pytest.fixture
def sides(mem_sides: MemSides) -> MemSides:
    """The scheduler, the index and the process's limits are the point: no node needed."""
    return mem_sides


def test_one_wake_up_at_the_earliest_deadline_of_many_stored_channels(sides: MemSides) -> None:
    """An older server added an APScheduler job per stored channel at start. Now there is
    one wake-up, at the earliest deadline; a channel opened with an earlier one moves it."""
    async def scenario() -> tuple[list[str], dt.datetime, int, list[str], dt.datetime]:
        server = sides.server(review_interval=3600)
        now = int(time.time())
        records = [replace(failed_row(now + 86_400 * (2 + i)), status=ChannelStatus.OPEN)
                   for i in range(STORED)]
        server.store.put_many(records)
        server.store.put_chain_states(Role.SERVER, {r.contract_txid: ChainState(
            contract_height=1) for r in records})
        await server.listen()
        jobs = [job.id for job in server.watcher.scheduler.get_jobs()]
        first = server.watcher.scheduler.get_job("deadline").next_run_time
        earlier = replace(failed_row(now + 86_400), status=ChannelStatus.OPEN)
        server.store.put(earlier)
        server.watcher.watch(earlier)
        moved = [job.id for job in server.watcher.scheduler.get_jobs()]
        second = server.watcher.scheduler.get_job("deadline").next_run_time
        await server.stop()
        return jobs, first, min(r.contract.expiry for r in records), moved, second

    jobs, first, earliest, moved, second = asyncio.run(scenario())
    margin = FAST.settle_margin
    assert sorted(jobs) == sorted(moved) == ["deadline", "review"]
    assert first == dt.datetime.fromtimestamp(earliest - margin, dt.UTC)
    assert second == dt.datetime.fromtimestamp(earliest - 86_400 - margin, dt.UTC)


def test_the_server_raises_its_open_files_limit_to_serve_many_connections(sides: MemSides) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        async def scenario() -> int:
            server = sides.server()
            await server.listen()
            raised = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            await server.stop()
            return raised

        assert asyncio.run(scenario()) == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_full_garbage_collections_do_not_walk_the_index(sides: MemSides) -> None:
    """With 100,000 watched channels a full collection walked the index's dicts and deadline
    heap: tens of milliseconds holding the event loop, at random moments. Once the watcher
    has built its index, the index is out of the collector's way."""
    async def scenario() -> tuple[int, int]:
        server = sides.server(review_interval=3600)
        now = int(time.time())
        records = [replace(failed_row(now + 86_400), status=ChannelStatus.OPEN)
                   for _ in range(STORED)]
        server.store.put_many(records)
        await server.listen()
        index = server.watcher.index
        containers = [c for c in vars(index).values() if gc.is_tracked(c)]
        walked = {id(o) for o in gc.get_objects()}
        await server.stop()
        return len(containers), sum(id(c) in walked for c in containers)

    containers, walked = asyncio.run(scenario())
    assert containers > 0  # the deadline heap at least
    assert walked == 0
