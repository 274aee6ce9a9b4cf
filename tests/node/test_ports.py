"""The node ports: `AsyncBitcoind` implements every one as it is declared (and
`MiningBroadcaster` the broadcaster's); nothing outside `node/` speaks RPC, and the services
reach a node only through its ports."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import pytest

import bitcoind_paychan
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind, NodeConfig
from bitcoind_paychan.node.ports import (
    Broadcaster,
    ChainSource,
    FeeEstimator,
    Miner,
    Node,
    NodePorts,
    Wallet,
    minimum_confirmations,
)
from bitcoind_paychan.service.regtest import MiningBroadcaster, regtest_ports

PACKAGE = Path(bitcoind_paychan.__file__).parent
PORTS: tuple[type[Any], ...] = (ChainSource, Broadcaster, FeeEstimator, Wallet, Miner)
CONCRETE = {"Bitcoind", "AsyncBitcoind", "RpcClient"}  # what only node/ and the wiring name


def typed(node: AsyncBitcoind, mining: MiningBroadcaster
          ) -> tuple[ChainSource, Broadcaster, FeeEstimator, Wallet, Miner, Node, Broadcaster]:
    """For mypy (it runs over the tests): AsyncBitcoind is every port, MiningBroadcaster a
    broadcaster."""
    return node, node, node, node, node, node, mining


def members(port: type[Any]) -> set[str]:
    """The names a port declares, its bases' included."""
    return {name for cls in port.__mro__ if cls.__module__ == "bitcoind_paychan.node.ports"
            for name in vars(cls) if not name.startswith("_")}


def shape(member: Any) -> tuple[bool, list[tuple[str, Any]]] | str:
    """Async or not, and the parameters (names and defaults); "property" for one."""
    if isinstance(member, property):
        return "property"
    params = inspect.signature(member).parameters.values()
    return inspect.iscoroutinefunction(member), [(p.name, p.default) for p in params]


def a_node() -> AsyncBitcoind:
    return AsyncBitcoind(Bitcoind(NodeConfig(user="u", password="p")))  # not reached


@pytest.mark.parametrize("port", PORTS, ids=lambda port: port.__name__)
def test_async_bitcoind_implements_each_port_as_declared(port: type[Any]) -> None:
    assert members(port)
    for name in members(port):
        declared = shape(inspect.getattr_static(port, name))
        assert shape(inspect.getattr_static(AsyncBitcoind, name)) == declared, name


def test_mining_broadcaster_is_a_broadcaster_over_another() -> None:
    for name in members(Broadcaster):
        declared = shape(inspect.getattr_static(Broadcaster, name))
        assert shape(inspect.getattr_static(MiningBroadcaster, name)) == declared, name
    node = a_node()
    ports = regtest_ports(node)
    assert isinstance(ports.broadcaster, MiningBroadcaster)
    assert ports.broadcaster.broadcaster is node and ports.broadcaster.miner is node
    assert (ports.chain, ports.fees, ports.wallet) == (node, node, node)


def test_node_ports_take_one_node_and_replace_any_port() -> None:
    node, other = a_node(), a_node()
    ports = NodePorts.of(node)
    assert ports == NodePorts(node, node, node, node)
    replaced = NodePorts.of(ports, broadcaster=other, wallet=other)
    assert replaced == NodePorts(node, other, node, other)
    assert NodePorts.of(replaced) == replaced


def test_payments_wait_for_a_confirmation_except_on_regtest() -> None:
    assert a_node().chain == "regtest" and minimum_confirmations("regtest") == 0
    assert [minimum_confirmations(c) for c in ("main", "test", "signet")] == [1, 1, 1]


# -- the guard: only node/ speaks RPC ---------------------------------------------------------

def rpc_reaches(source: str) -> list[str]:
    """Each `….rpc.call` and `….node.rpc` in `source`, as `line: text`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and (
                (node.attr, node.value.attr) in {("call", "rpc"), ("rpc", "node")}):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def reaches_through(source: str) -> list[str]:
    """Each `….node.<anything>` (reaching through a port to the node behind it) and each
    import of a concrete node class in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and (
                node.value.attr == "node"):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and {a.name for a in node.names} & CONCRETE:
            found.append(f"{node.lineno}: imports {sorted({a.name for a in node.names})}")
    return found


def test_the_guards_see_a_reach_through() -> None:
    code = ("from bitcoind_paychan.node import AsyncBitcoind\n"
            "raw = self.wallet.node.rpc.call('getblock', h, 0)\nwallet.node.config.chain\n")
    assert rpc_reaches(code) == ["2: self.wallet.node.rpc.call", "2: self.wallet.node.rpc"]
    assert sorted(reaches_through(code)) == [
        "1: imports ['AsyncBitcoind']", "2: self.wallet.node.rpc", "3: wallet.node.config"]
    assert rpc_reaches("node.tip()\nself.chain.raw_block(h)\n") == []


def test_nothing_outside_node_speaks_rpc() -> None:
    reaches = {str(path.relative_to(PACKAGE)): rpc_reaches(path.read_text())
               for path in PACKAGE.rglob("*.py") if "node" not in path.relative_to(PACKAGE).parts}
    assert len(reaches) > 50
    assert {path: found for path, found in reaches.items() if found} == {}


def test_services_reach_a_node_only_through_its_ports() -> None:
    """service/regtest.py builds a regtest node's ports, so it names the concrete node."""
    services = [p for p in (PACKAGE / "service").glob("*.py") if p.name != "regtest.py"]
    assert len(services) > 5
    assert {p.name: reaches_through(p.read_text()) for p in services
            if reaches_through(p.read_text())} == {}
