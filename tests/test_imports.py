"""The core is import-pure: importing the machines (`channel`), `bitcoin` or `wire`, or the
package itself, loads no event loop, socket, TLS, database, RPC, scheduler or YAML, nor any
adapter of ours (ARCHITECTURE.md: the core has no sockets, RPC, database or clock). And the
package's lazy exports are the same names, objects and types as eager ones would be."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import bitcoind_paychan

PACKAGE = Path(bitcoind_paychan.__file__).parent
# What an adapter needs and the core must never load (google.protobuf is the wire's codec).
IO_MODULES = ("asyncio", "selectors", "socket", "ssl", "sqlite3", "psycopg", "zmq", "aiohttp",
              "apscheduler", "bitcoinrpc", "yaml")
CORE = ("errors", "bitcoin", "channel", "wire")  # the package's pure parts


def loaded_by(module: str) -> list[str]:
    """Every module a fresh interpreter holds after `import module`."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    loaded: list[str] = json.loads(run.stdout)
    return loaded


@pytest.mark.parametrize("module", [
    "bitcoind_paychan", "bitcoind_paychan.channel.server", "bitcoind_paychan.channel.client",
    "bitcoind_paychan.bitcoin", "bitcoind_paychan.wire",
])
def test_the_core_loads_no_io(module: str) -> None:
    loaded = loaded_by(module)
    assert module in loaded
    io = [name for name in loaded if name.split(".")[0] in IO_MODULES]
    assert io == [], f"import {module} loads {io}"
    ours = [name for name in loaded if name.startswith("bitcoind_paychan.")
            and name.split(".")[1] not in CORE]
    assert ours == [], f"import {module} loads adapters {ours}"


def test_an_adapter_does_load_io() -> None:
    """The check above can see what it forbids: the TCP transport loads asyncio."""
    assert "asyncio" in loaded_by("bitcoind_paychan.transport.tcp")


def type_checking_imports() -> dict[str, str]:
    """Each name the package imports for type checkers only, with its module."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    (block,) = [node for node in tree.body if isinstance(node, ast.If)
                and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"]
    return {alias.name: f".{node.module.removeprefix('bitcoind_paychan.')}"
            for node in block.body if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names}


def test_lazy_exports_are_what_type_checkers_see() -> None:
    lazy: dict[str, str] = bitcoind_paychan._MODULE_OF
    assert type_checking_imports() == lazy
    assert set(lazy) <= set(bitcoind_paychan.__all__)
    eager = set(bitcoind_paychan.__all__) - set(lazy)
    assert all(name in vars(bitcoind_paychan) for name in eager), "every other export is eager"


def test_every_export_resolves_to_its_module_object() -> None:
    for name, module in bitcoind_paychan._MODULE_OF.items():
        home = __import__(f"bitcoind_paychan{module}", fromlist=[name])
        assert getattr(bitcoind_paychan, name) is getattr(home, name)
    assert set(bitcoind_paychan.__all__) <= set(dir(bitcoind_paychan))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'PaymentServr'"):
        bitcoind_paychan.PaymentServr  # type: ignore[attr-defined]  # noqa: B018


def test_transport_imports_nothing_above_it() -> None:
    """Services and the daemon use the transports, never the other way round."""
    upward = [f"{path.name}: {node.module}"
              for path in sorted((PACKAGE / "transport").rglob("*.py"))
              for node in ast.walk(ast.parse(path.read_text()))
              if isinstance(node, ast.ImportFrom) and node.module
              and node.module.startswith(("bitcoind_paychan.service", "bitcoind_paychan.daemon"))]
    assert upward == []
