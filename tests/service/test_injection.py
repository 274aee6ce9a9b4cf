"""The managers take a node's ports (one `AsyncBitcoind`, as before, or `NodePorts`) and,
optionally, a watcher built elsewhere, which serves them with the manager's hooks. Nothing here
is started, so no node is reached."""

from __future__ import annotations

import pytest

from bitcoind_paychan.bitcoin.network import Network
from bitcoind_paychan.channel.records import Role
from bitcoind_paychan.channel.watch import WatchPolicy
from bitcoind_paychan.errors import InvalidParameter
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind, NodeConfig
from bitcoind_paychan.node.ports import NodePorts
from bitcoind_paychan.service.client import ClientManager
from bitcoind_paychan.service.server import ServerManager
from bitcoind_paychan.service.watcher import ChainWatcher
from bitcoind_paychan.store import MemoryStore


def a_node(chain: str = "regtest") -> AsyncBitcoind:
    return AsyncBitcoind(Bitcoind(NodeConfig(chain=chain, user="u", password="p")))


def test_a_manager_built_on_one_node_uses_it_for_every_port() -> None:
    node = a_node()
    server = ServerManager(node, MemoryStore())
    assert server.ports == NodePorts(node, node, node, node)
    assert server.wallet is node and server.broadcaster is node
    watcher = server.watcher
    assert (watcher.chain, watcher.broadcaster, watcher.fees) == (node, node, node)
    client = ClientManager(node, MemoryStore())
    assert client.ports == NodePorts(node, node, node, node)
    assert (client.wallet, client.chain, client.broadcaster) == (node, node, node)


def test_each_port_may_come_from_elsewhere() -> None:
    node, broadcaster = a_node(), a_node()
    server = ServerManager(NodePorts.of(node, broadcaster=broadcaster), MemoryStore())
    assert server.broadcaster is broadcaster and server.wallet is node
    assert server.watcher.broadcaster is broadcaster and server.watcher.chain is node


def test_the_chain_port_says_the_network_and_the_confirmations_asked() -> None:
    assert ServerManager(a_node(), MemoryStore()).min_confirmations == 0
    assert ServerManager(a_node("signet"), MemoryStore()).min_confirmations == 1
    assert ServerManager(a_node("signet"), MemoryStore(), min_confirmations=3
                         ).min_confirmations == 3
    assert ClientManager(a_node("signet"), MemoryStore()).network is Network.SIGNET
    assert ClientManager(a_node("signet"), MemoryStore(), network=Network.REGTEST
                         ).network is Network.REGTEST


def test_a_server_takes_a_watcher_and_binds_its_hooks() -> None:
    store = MemoryStore()
    policy = WatchPolicy(settle_margin=7_200)
    watcher = ChainWatcher(Role.SERVER, a_node(), store, policy,
                           settle=lambda txid: _never(), on_event=print)
    server = ServerManager(a_node(), store, watcher=watcher)
    assert server.watcher is watcher
    assert watcher.settle == server._settle_claimed and watcher.on_event == server._finished
    assert watcher.leases is server.leases
    assert server.policy.settle_margin == 7_200  # the watcher's policy is the autopilot's


def test_a_client_takes_a_watcher_and_binds_its_hooks() -> None:
    store = MemoryStore()
    watcher = ChainWatcher(Role.CLIENT, a_node(), store)
    client = ClientManager(a_node(), store, watcher=watcher)
    assert client.watcher is watcher
    assert watcher.on_event == client.events.tell and watcher.callbacks is client.callbacks


def test_a_watcher_of_another_role_or_store_is_refused() -> None:
    store = MemoryStore()
    with pytest.raises(InvalidParameter, match="a client watcher cannot serve a server manager"):
        ServerManager(a_node(), store, watcher=ChainWatcher(Role.CLIENT, a_node(), store))
    with pytest.raises(InvalidParameter, match="another store"):
        ClientManager(a_node(), store,
                      watcher=ChainWatcher(Role.CLIENT, a_node(), MemoryStore()))


async def _never() -> None:
    raise AssertionError("not settled in these tests")
