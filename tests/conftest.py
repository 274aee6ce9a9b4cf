"""Shared fixtures: real regtest nodes, one fresh set per test (as Core's test_framework)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
