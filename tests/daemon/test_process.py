"""The daemon's acts on the whole process (daemon/process.py): a raised open files limit, so
each connected channel has its socket, and, once its services are ready, the watchers'
indexes frozen out of the collector's full passes (thawed when it stops)."""

from __future__ import annotations

import asyncio
import gc
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from regtest.node import RegtestNode, regtest_nodes
from tests.conftest import running_daemon as running


@pytest.fixture(scope="module")
def node() -> Iterator[RegtestNode]:
    with regtest_nodes(1) as (started,):
        yield started


def test_the_daemon_raises_its_open_files_limit_to_serve_many_connections(
        node: RegtestNode, tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = 256 if hard == resource.RLIM_INFINITY else min(256, hard - 1)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        async def scenario() -> int:
            async with running(node, tmp_path):
                return resource.getrlimit(resource.RLIMIT_NOFILE)[0]

        assert asyncio.run(scenario()) == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_full_garbage_collections_do_not_walk_the_indexes_of_a_ready_daemon(
        node: RegtestNode, tmp_path: Path) -> None:
    """With 100,000 watched channels a full collection walked the index's dicts and deadline
    heap: tens of milliseconds holding the event loop, at random moments. Once the daemon is
    ready, both roles' indexes are out of the collector's way; once it stopped, no longer."""
    async def scenario() -> tuple[int, int, int]:
        async with running(node, tmp_path) as daemon:
            services = [s for s in (daemon.server, daemon.client) if s is not None]
            containers = [c for service in services
                          for c in vars(service.watcher.index).values() if gc.is_tracked(c)]
            walked = {id(o) for o in gc.get_objects()}
            frozen = gc.get_freeze_count()
        return len(containers), sum(id(c) in walked for c in containers), frozen

    containers, walked, frozen = asyncio.run(scenario())
    assert containers >= 2  # each role's deadline heap at least
    assert walked == 0 and frozen > 0
    assert gc.get_freeze_count() == 0  # thawed at stop
