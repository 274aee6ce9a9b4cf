"""The README's library examples, one per level, run as written on real regtest nodes and
pass `mypy --strict` as an integrator's code would (outside the checkout, finding the package
and `regtest` as installed)."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from bitcoind_paychan import Bitcoind, ChannelStatus, Role, SQLiteStore
from regtest.node import RegtestNode
from tests.conftest import config_for

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = ("level-1", "level-2", "level-3", "regtest-nodes")


def block(name: str) -> str:
    """The README's python block between `<!-- name -->` and `<!-- /name -->`."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {name} -->\s*```python\n(.*?)```\s*<!-- /{name} -->", readme,
                      re.DOTALL)
    assert match, f"the README lost its {name} block"
    return match.group(1)


def load(name: str, folder: Path) -> ModuleType:
    path = folder / f"{name.replace('-', '_')}.py"
    path.write_text(block(name))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_level(name: str, nodes: list[RegtestNode], folder: Path) -> None:
    server_node, client_node = (Bitcoind(config_for(node)) for node in nodes)
    asyncio.run(load(name, folder).main(server_node, client_node))


def server_channel(folder: Path) -> tuple[str, ChannelStatus, int]:
    store = SQLiteStore(folder / "server.db", read_only=True)
    try:
        (record,) = store.channels(Role.SERVER)
        return record.peer, record.status, record.paid
    finally:
        store.close()


def test_level_1_the_machines_open_pay_and_close(two_nodes: list[RegtestNode], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run_level("level-1", two_nodes, tmp_path)
    out = capsys.readouterr().out
    assert "ChannelOpened" in out and "PaymentReceived" in out and "PaymentAcknowledged" in out
    settlement = re.search(r"settled by ([0-9a-f]{64}) paying (\d+)", out)
    assert settlement, out
    assert int(settlement.group(2)) == 1_000 + 5_000  # the opening payment and the coffee
    assert two_nodes[0].rpc("getmempoolentry", settlement.group(1))  # broadcast


def test_level_2_managers_over_your_own_connection(two_nodes: list[RegtestNode],
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # its stores: server.db, client.db
    run_level("level-2", two_nodes, tmp_path)
    assert "('user 42', 'closing', 2000)" in capsys.readouterr().out
    assert server_channel(tmp_path) == ("user 42", ChannelStatus.CLOSING, 2_000)


def test_level_3_services(two_nodes: list[RegtestNode], tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    run_level("level-3", two_nodes, tmp_path)
    out = capsys.readouterr().out
    assert "+1000 sat from 127.0.0.1:" in out and "for b'article 17'; 2000 in total" in out
    assert "acknowledged: b'thanks'" in out and "settled by" in out
    events = [line.removeprefix("server: ") for line in out.splitlines()
              if line.startswith("server: ")]
    assert events == ["PaymentReceived", "ChannelOpened", "PaymentReceived", "ChannelClosed"]
    peer, status, paid = server_channel(tmp_path)
    assert peer.startswith("127.0.0.1:") and status is ChannelStatus.CLOSING and paid == 2_000


def test_the_examples_pass_mypy_strict_outside_the_checkout(tmp_path: Path) -> None:
    """As an integrator's code: in a folder of its own, with no configuration of ours;
    `regtest` is found through the installed path and must be typed (py.typed)."""
    files = []
    for name in BLOCKS:
        path = tmp_path / f"{name.replace('-', '_')}.py"
        path.write_text(block(name))
        files.append(path.name)
    checked = mypy_strict(tmp_path, *files)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Success: no issues found in 4 source files" in checked.stdout


def test_a_misspelt_callback_fails_mypy_strict(tmp_path: Path) -> None:
    """`PaymentServer`'s signature is explicit: a misspelt option is a type error."""
    (tmp_path / "typo.py").write_text(
        "from bitcoind_paychan import AsyncBitcoind, PaymentServer, SQLiteStore\n"
        "def make(wallet: AsyncBitcoind) -> PaymentServer:\n"
        "    return PaymentServer(wallet, SQLiteStore('s.db'), on_paymnet=print)\n")
    checked = mypy_strict(tmp_path, "typo.py")
    assert checked.returncode == 1, checked.stdout
    assert 'Unexpected keyword argument "on_paymnet"' in checked.stdout, checked.stdout


def test_the_errors_old_import_path_still_passes_mypy_strict(tmp_path: Path) -> None:
    """Integrators' code written when the channel errors lived in `service.client` keeps
    type-checking: that module re-exports them (the same classes as `errors`')."""
    (tmp_path / "old.py").write_text(
        "from bitcoind_paychan.service.client import ChannelExists, ChannelFailed, ChannelGone\n"
        "from bitcoind_paychan.service.client import ClientEvent, ClientEventHandler\n"
        "def why(exc: ChannelFailed | ChannelExists) -> str:\n"
        "    return 'gone' if isinstance(exc, ChannelGone) else str(exc)\n"
        "def handler(on_event: ClientEventHandler, event: ClientEvent) -> object:\n"
        "    return on_event(event)\n")
    checked = mypy_strict(tmp_path, "old.py")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    from bitcoind_paychan import errors
    from bitcoind_paychan.service import client
    assert (client.ChannelExists, client.ChannelFailed, client.ChannelGone) == (
        errors.ChannelExists, errors.ChannelFailed, errors.ChannelGone)


def mypy_strict(folder: Path, *files: str) -> subprocess.CompletedProcess[str]:
    """`mypy --strict` on `files` in `folder`, as an integrator runs it on its own code."""
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir",
         str(ROOT / ".mypy_cache" / "readme"), *files],
        cwd=folder, capture_output=True, text=True, timeout=600)


def test_every_error_class_is_exported_and_in_the_api_doc() -> None:
    """The package docstring promises every class of `errors` (a merge once added one that
    neither `__all__` nor docs/api.md named)."""
    import bitcoind_paychan
    from bitcoind_paychan import errors

    classes = {name for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, errors.PaychanError)}
    assert "InvalidParameter" in classes and "NotStarted" in classes
    assert classes <= set(bitcoind_paychan.__all__)
    api = (ROOT / "docs" / "api.md").read_text()
    assert not {name for name in classes if name not in api}
