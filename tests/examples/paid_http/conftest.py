"""The paid API beside a server node and paying clients beside a client node (tests/service's
`MemSides`: both on the in-process chain, a store each: the application is the point, not
the node; its README's walk-through runs on real nodes)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.service.server import ServerManager
from regtest.node import free_port
from tests.service.conftest import FAST, Duo, MemSides

from paid_http.client import PaidClient, client_manager
from paid_http.server import PaidApi, run_api

PRICE = 100
VALUE = 200_000


@dataclass
class Api:
    url: str  # the paid API's root, /api/
    api: PaidApi
    manager: ServerManager


@contextlib.asynccontextmanager
async def paid_api(sides: Duo, price: int = PRICE, name: str = "api", port: int = 0
                   ) -> AsyncIterator[Api]:
    """The paid API on `port` (default: a free one), its channels stored in the store `name`."""
    policy = ServerPolicy()
    api = PaidApi(policy, price)

    def on_event(event: object) -> None:
        sides.events.append(event)  # type: ignore[arg-type]
        api.on_event(event)

    manager = ServerManager(sides.server_ports(), sides.store(name), policy,
                            on_event=on_event, poll_interval=sides.poll_interval,
                            review_interval=0.5, autopilot=FAST)
    port = port or free_port()
    runner = await run_api(api, manager, "127.0.0.1", port)
    try:
        yield Api(f"http://127.0.0.1:{port}/api/", api, manager)
    finally:
        await runner.cleanup()
        await manager.stop()


@contextlib.asynccontextmanager
async def paid_client(sides: Duo, name: str = "client", value: int = VALUE
                      ) -> AsyncIterator[PaidClient]:
    """A paying client whose channels are stored in the store `name` (a restart: the block
    ends, another begins on the same store)."""
    async with client_manager(sides.client_ports(), sides.store(name), value,
                              poll_interval=sides.poll_interval,
                              review_interval=0.5, autopilot=FAST,
                              on_event=sides.client_event) as client:
        yield client


@pytest.fixture
def sides(tmp_path: Path) -> Iterator[MemSides]:
    sides = MemSides(tmp_path)
    yield sides
    sides.close()
