"""Many stored channels: one deadline wake-up, not a job per channel; the process left to
its application (on the in-process chain)."""

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


def test_a_payment_server_leaves_the_process_limits_and_collector_alone(sides: MemSides) -> None:
    """Raising the open files limit and freezing the heap act on the whole process: the
    daemon takes them (tests/daemon/test_process.py), a library's server does not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = 256 if hard == resource.RLIM_INFINITY else min(256, hard - 1)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        async def scenario() -> tuple[int, int]:
            server = sides.server()
            await server.listen()
            seen = resource.getrlimit(resource.RLIMIT_NOFILE)[0], gc.get_freeze_count()
            await server.stop()
            return seen

        assert asyncio.run(scenario()) == (lowered, 0)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
