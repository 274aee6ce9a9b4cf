"""A server and a client, each beside its own regtest node, on one chain."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bitcoind_paychan.channel.effects import ChannelOpened, PaymentReceived, PeerError
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.node import Bitcoind
from bitcoind_paychan.service.client import PaymentClient
from bitcoind_paychan.service.regtest import MiningBroadcaster
from bitcoind_paychan.service.server import PaymentServer, ServerEvent
from bitcoind_paychan.store import SQLiteStore
from regtest.node import RegtestNode, sync_tips
from tests.conftest import config_for


@dataclass
class Sides:
    server_node: RegtestNode
    client_node: RegtestNode
    tmp: Path
    events: list[ServerEvent] = field(default_factory=list)

    def server(self, policy: ServerPolicy | None = None, name: str = "server") -> PaymentServer:
        node = Bitcoind(config_for(self.server_node))
        return PaymentServer(MiningBroadcaster(node), SQLiteStore(self.tmp / f"{name}.db"),
                             policy, on_event=self.events.append)

    def client(self, name: str = "client") -> PaymentClient:
        node = Bitcoind(config_for(self.client_node))
        return PaymentClient(MiningBroadcaster(node), SQLiteStore(self.tmp / f"{name}.db"))

    def payments(self) -> list[PaymentReceived]:
        return [e for e in self.events if isinstance(e, PaymentReceived)]

    def opened(self) -> list[ChannelOpened]:
        return [e for e in self.events if isinstance(e, ChannelOpened)]

    def errors(self) -> list[PeerError]:
        return [e for e in self.events if isinstance(e, PeerError)]

    def sync(self) -> None:
        sync_tips([self.server_node, self.client_node])

    def fund_client(self, coins: int, btc: int = 1) -> None:
        """Give the client's wallet `coins` confirmed coins, so it can fund that many
        contracts without waiting for unconfirmed change to reach its node."""
        amounts = {self.client_node.new_address(): btc for _ in range(coins)}
        self.server_node.wallet_rpc("sendmany", "", amounts)
        self.mine(1)

    def mine(self, blocks: int = 1) -> None:
        self.server_node.mine(blocks)
        self.sync()


@pytest.fixture
def sides(two_nodes: list[RegtestNode], tmp_path: Path) -> Iterator[Sides]:
    yield Sides(two_nodes[0], two_nodes[1], tmp_path)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def advance_chain_time(sides: Sides, past: int) -> None:
    """Move the client node's clock and median-time-past beyond `past`. (The nodes part:
    a day's mocktime jump makes them drop each other as unresponsive peers.)"""
    sides.client_node.advance_median_time_past(past)
