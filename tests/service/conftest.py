"""A server and a client, each beside its own regtest node on one chain (`sides`), or both
beside one node with a wallet each (`one_node`: for tests that move the node's clock, which
makes peers drop each other)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bitcoind_paychan.channel.effects import (
    ChannelFinished,
    ChannelOpened,
    ClosingSeen,
    PaymentReceived,
    PeerError,
)
from bitcoind_paychan.channel.server import ServerPolicy
from bitcoind_paychan.channel.watch import WatchPolicy
from bitcoind_paychan.node import Bitcoind
from bitcoind_paychan.node.bitcoind import COIN
from bitcoind_paychan.node.ports import Node, NodePorts
from bitcoind_paychan.service.client import ClientEvent, PaymentClient
from bitcoind_paychan.service.regtest import regtest_ports
from bitcoind_paychan.service.server import PaymentServer, ServerEvent
from bitcoind_paychan.store import SQLiteStore
from regtest.memchain import MemChain
from regtest.memnode import MemNode
from regtest.node import DEFAULT_WALLET, RegtestNode, sync_tips
from tests.conftest import config_for

FAST = WatchPolicy(forget_depth=2, bump_after_blocks=1)


@dataclass
class Duo:
    """A server and a client side: their stores, services and what they heard. Subclasses
    say which node each side's services use."""

    tmp: Path
    events: list[ServerEvent] = field(default_factory=list)
    client_events: list[ChannelFinished] = field(default_factory=list)
    client_heard: list[ClientEvent] = field(default_factory=list)  # all, in order
    client_closing: list[ClosingSeen] = field(default_factory=list)  # seen in the mempool
    stores: dict[str, SQLiteStore] = field(default_factory=dict)
    poll_interval: float = 0.2

    def server_ports(self) -> Node | NodePorts:
        """The node ports a new server service of this test uses."""
        raise NotImplementedError

    def client_ports(self) -> Node | NodePorts:
        """The node ports a new client service of this test uses."""
        raise NotImplementedError

    def store(self, name: str) -> SQLiteStore:
        """The store `name`, opened once: one process owns a store, and every service this
        test builds on it (one after another, or side by side) shares that one object."""
        if name not in self.stores or not self.stores[name].is_open:  # closed: a restart
            self.stores[name] = SQLiteStore(self.tmp / f"{name}.db")
        return self.stores[name]

    def close(self) -> None:
        for store in self.stores.values():
            store.close()

    def server(self, policy: ServerPolicy | None = None, name: str = "server",
               kind: type[PaymentServer] = PaymentServer, **options: Any) -> PaymentServer:
        options.setdefault("poll_interval", self.poll_interval)
        options.setdefault("review_interval", 0.5)
        options.setdefault("autopilot", FAST)
        return kind(self.server_ports(), self.store(name), policy,
                    on_event=self.events.append, **options)

    def client(self, name: str = "client", **options: Any) -> PaymentClient:
        options.setdefault("poll_interval", self.poll_interval)
        options.setdefault("review_interval", 0.5)
        options.setdefault("autopilot", FAST)
        return PaymentClient(self.client_ports(), self.store(name),
                             on_event=self.client_event, **options)

    def client_event(self, event: ClientEvent) -> None:
        self.client_heard.append(event)
        if isinstance(event, ClosingSeen):
            self.client_closing.append(event)
        elif isinstance(event, ChannelFinished):
            self.client_events.append(event)

    def payments(self) -> list[PaymentReceived]:
        return [e for e in self.events if isinstance(e, PaymentReceived)]

    def opened(self) -> list[ChannelOpened]:
        return [e for e in self.events if isinstance(e, ChannelOpened)]

    def errors(self) -> list[PeerError]:
        return [e for e in self.events if isinstance(e, PeerError)]


@dataclass(kw_only=True)
class Sides(Duo):
    """Each side beside a real regtest node (or both beside one, with a wallet each)."""

    server_node: RegtestNode
    client_node: RegtestNode
    client_wallet: str = DEFAULT_WALLET

    def server_ports(self) -> Node | NodePorts:
        return regtest_ports(Bitcoind(config_for(self.server_node)))

    def client_ports(self) -> Node | NodePorts:
        node = Bitcoind(config_for(self.client_node, wallet=self.client_wallet))
        return regtest_ports(node)

    def sync(self) -> None:
        if self.server_node is not self.client_node:
            sync_tips([self.server_node, self.client_node])

    def fund_client(self, coins: int, btc: int = 1) -> None:
        """Give the client's wallet `coins` confirmed coins, so it can fund that many
        contracts without waiting for unconfirmed change to reach its node."""
        amounts = {self.client_node.new_address(): btc for _ in range(coins)}
        self.server_node.pay_in_block(amounts)
        self.sync()

    def mine(self, blocks: int = 1) -> None:
        self.server_node.mine(blocks)
        self.sync()


@dataclass(kw_only=True)
class MemSides(Duo):
    """Both sides on one in-process chain (`regtest.memchain`), a node and wallet each: for
    tests of the services' decisions, in milliseconds. Each wallet starts with one 50 BTC
    coin, as a regtest node's."""

    chain: MemChain = field(default_factory=MemChain)
    server_node: MemNode = field(init=False)
    client_node: MemNode = field(init=False)
    poll_interval: float = 0.05

    def __post_init__(self) -> None:
        self.server_node, self.client_node = MemNode(self.chain), MemNode(self.chain)
        self.server_node.wallet.receive(50 * COIN)
        self.client_node.wallet.receive(50 * COIN)

    def server_ports(self) -> Node | NodePorts:
        return self.server_node

    def client_ports(self) -> Node | NodePorts:
        return self.client_node

    def sync(self) -> None:
        """One chain: nothing to wait for."""

    def fund_client(self, coins: int, btc: int = 1) -> None:
        self.client_node.wallet.receive(*[btc * COIN] * coins)

    def mine(self, blocks: int = 1) -> None:
        self.chain.mine(blocks)

    def confirmations(self, txid: str) -> int | None:
        """How deep `txid` is (0: in the mempool; None: unknown), as getrawtransaction says."""
        found = self.chain.transaction(bytes.fromhex(txid)[::-1])
        if found is None:
            return None
        return 0 if found[1] is None else self.chain.height - found[1] + 1


@pytest.fixture
def sides(two_nodes: list[RegtestNode], tmp_path: Path) -> Iterator[Sides]:
    sides = Sides(tmp_path, server_node=two_nodes[0], client_node=two_nodes[1])
    yield sides
    sides.close()


@pytest.fixture
def mem_sides(tmp_path: Path) -> Iterator[MemSides]:
    """A server and a client on one in-process chain (no node)."""
    sides = MemSides(tmp_path)
    yield sides
    sides.close()


@pytest.fixture
def one_node(node: RegtestNode, tmp_path: Path) -> Iterator[Sides]:
    node.rpc("createwallet", "client")
    addresses = [node.rpc("getnewaddress", wallet="client") for _ in range(2)]
    node.pay_in_block({address: 5 for address in addresses})
    for _ in range(100):  # the wallet has seen the block (mine() syncs; checked anyway)
        trusted = node.rpc("getbalances", wallet="client")["mine"]["trusted"]
        if trusted >= 10:
            break
        time.sleep(0.1)
    assert trusted >= 10, f"the client wallet holds {trusted} BTC confirmed, not 10"
    sides = Sides(tmp_path, server_node=node, client_node=node, client_wallet="client")
    yield sides
    sides.close()


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def advance_chain_time(sides: Sides | MemSides, past: int) -> None:
    """Move the client node's clock and median-time-past beyond `past`. (The nodes part:
    a day's mocktime jump makes them drop each other as unresponsive peers.)"""
    if isinstance(sides, MemSides):
        sides.chain.advance_median_time_past(past)
    else:
        sides.client_node.advance_median_time_past(past)
