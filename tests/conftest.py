"""Shared fixtures: real regtest nodes, one fresh set per test (as Core's test_framework)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bitcoind_paychan.daemon.config import config_from_dict
from bitcoind_paychan.daemon.daemon import Daemon
from bitcoind_paychan.node import Bitcoind, NodeConfig
from regtest.node import RegtestNode, free_port, regtest_nodes
from regtest.postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole session (started on first use, as an
    unprivileged user when we are root), stopped and removed at the end. Without fsync: the
    tests crash processes and the server, never the machine."""
    with PostgresServer(fsync=False) as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """The DSN of a new, empty database on the session's PostgreSQL server."""
    return postgres_server.dsn(postgres_server.new_database())


@pytest.fixture
def node() -> Iterator[RegtestNode]:
    """A running regtest node whose wallet has a spendable coinbase."""
    with regtest_nodes(1) as (started,):
        yield started


@pytest.fixture
def two_nodes() -> Iterator[list[RegtestNode]]:
    """Two peered regtest nodes on one chain, each with a funded wallet."""
    with regtest_nodes(2, connected=True) as started:
        yield started


def config_for(node: RegtestNode, **overrides: object) -> NodeConfig:
    """Adapter settings for `node` (cookie auth, its wallet)."""
    settings: dict[str, object] = {
        "url": node.rpc_url,
        "chain": "regtest",
        "wallet": node.wallet,
        "cookie_file": node.cookie_path,
    }
    settings.update(overrides)
    return NodeConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
def bitcoind(node: RegtestNode) -> Bitcoind:
    """The node adapter attached to `node`."""
    return Bitcoind(config_for(node))


@contextlib.asynccontextmanager
async def running_daemon(node: RegtestNode, tmp: Path, **sections: dict[str, Any]
                         ) -> AsyncIterator[Daemon]:
    """A daemon with both roles beside `node`, paying its own server (`self`), in this
    process; `sections` update its configuration."""
    data = self_paying_daemon(node, tmp)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    daemon = Daemon(config_from_dict(data))
    task = asyncio.create_task(daemon.run())
    deadline = time.monotonic() + 60
    while not (tmp / "control.cookie").exists():  # written once everything listens
        assert not task.done(), task.exception()
        assert time.monotonic() < deadline, "the daemon did not start"
        await asyncio.sleep(0.05)
    try:
        yield daemon
    finally:
        daemon.request_stop()
        await task


def self_paying_daemon(node: RegtestNode, tmp: Path) -> dict[str, Any]:
    """A daemon configuration beside `node` with both roles, its own server named `self`,
    its store, cookie and log file in `tmp`."""
    port = free_port()
    return {
        "bitcoind": {"url": node.rpc_url, "cookie_file": str(node.cookie_path),
                     "wallet": node.wallet, "poll_interval": 0.2},
        "server": {"enabled": True, "listen": f"127.0.0.1:{port}"},
        "client": {"enabled": True, "servers": {"self": f"127.0.0.1:{port}"}},
        "store": {"path": str(tmp / "channels.db")},
        "control": {"listen": f"127.0.0.1:{free_port()}",
                    "cookie_file": str(tmp / "control.cookie")},
        "logging": {"file": str(tmp / "daemon.log")},
    }
