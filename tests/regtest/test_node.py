"""The regtest harness: nodes start isolated, help with time and reorgs, and never linger."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from regtest.node import RegtestNode, regtest_nodes
from regtest.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split()[2] != "Z"


def _owner(body: str) -> subprocess.Popen[str]:
    """A separate Python process that starts nodes and runs `body`."""
    code = "import json, os, sys, time\nfrom regtest.node import regtest_nodes\n" + textwrap.dedent(
        body
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )


def test_node_is_isolated_and_cleaned_up() -> None:
    with regtest_nodes(1) as (node,):
        assert node.running and node.process is not None
        pid, datadir = node.process.pid, node.datadir
        assert node.wallet_rpc("getbalance") == 50
        assert node.rpc("getnetworkinfo")["localrelay"] is True
        assert node.rpc("getnetworkinfo")["connections"] == 0
        assert node.cookie_path.is_file()
    assert not _alive(pid)
    assert not datadir.exists()


def test_failing_body_still_stops_the_node() -> None:
    pid = 0
    with pytest.raises(RuntimeError, match="boom"), regtest_nodes(1, mature=False) as (node,):
        assert node.process is not None
        pid = node.process.pid
        raise RuntimeError("boom")
    assert pid and not _alive(pid)


def test_killed_owner_takes_its_node_along() -> None:
    owner = _owner("""
        with regtest_nodes(1, mature=False) as (node,):
            print(json.dumps([node.process.pid, str(node.datadir)]), flush=True)
            time.sleep(600)
    """)
    assert owner.stdout is not None
    pid, datadir = json.loads(owner.stdout.readline())
    assert _alive(pid)
    owner.kill()  # SIGKILL: no cleanup code runs in the owner
    owner.wait()
    wait_until(lambda: not _alive(pid), timeout=15, what="bitcoind to die with its owner")
    shutil.rmtree(datadir, ignore_errors=True)  # the owner had no chance to remove it


def test_sigterm_to_owner_stops_and_removes_nodes() -> None:
    owner = _owner("""
        with regtest_nodes(1, mature=False) as (node,):
            print(json.dumps([node.process.pid, str(node.datadir)]), flush=True)
            time.sleep(600)
    """)
    assert owner.stdout is not None
    pid, datadir = json.loads(owner.stdout.readline())
    owner.send_signal(signal.SIGTERM)
    owner.wait(60)
    assert not _alive(pid)
    assert not Path(datadir).exists()


def test_parallel_runs_never_collide() -> None:
    body = """
        with regtest_nodes(3, mature=False) as nodes:
            print(json.dumps([[n.rpc_port, n.tip()[1]] for n in nodes]), flush=True)
    """
    owners = [_owner(body) for _ in range(3)]
    results = []
    for owner in owners:
        out, _ = owner.communicate(timeout=120)
        assert owner.returncode == 0
        results.extend(json.loads(out))
    ports = [port for port, _ in results]
    assert len(ports) == 9 and len(set(ports)) == 9


def test_mocktime_moves_median_time_past(node: RegtestNode) -> None:
    target = int(time.time()) + 7 * 24 * 3600
    before = node.rpc("getblockchaininfo")["mediantime"]
    assert before < target
    node.advance_median_time_past(target)
    assert node.rpc("getblockchaininfo")["mediantime"] > target


def test_reorg_helpers(node: RegtestNode) -> None:
    height, tip = node.tip()
    node.invalidate(tip)
    assert node.tip()[0] == height - 1
    node.reconsider(tip)
    assert node.tip() == (height, tip)


def test_connected_nodes_share_a_chain(two_nodes: list[RegtestNode]) -> None:
    first, second = two_nodes
    assert first.tip() == second.tip()
    assert first.wallet_rpc("getbalance") > 0 and second.wallet_rpc("getbalance") > 0
    first.mine(2)
    wait_until(lambda: second.tip() == first.tip(), what="block relay")


def test_mine_tx_mines_exactly_that_tx(node: RegtestNode) -> None:
    raw = node.wallet_rpc("createrawtransaction", [], [{node.new_address(): 1}])
    funded = node.wallet_rpc("fundrawtransaction", raw)["hex"]
    signed = node.wallet_rpc("signrawtransactionwithwallet", funded)["hex"]
    block = node.mine_tx(signed)
    txid = node.rpc("decoderawtransaction", signed)["txid"]
    assert txid in node.rpc("getblock", block)["tx"]


def test_wait_until_times_out_with_its_reason() -> None:
    with pytest.raises(TimeoutError, match="the impossible"):
        wait_until(lambda: False, timeout=0.2, what="the impossible")


def test_start_failure_is_reported() -> None:
    broken = RegtestNode(extra_args=("-nosuchoption",), wallet=None)
    try:
        with pytest.raises(RuntimeError, match="nosuchoption"):
            broken.start()
        assert not broken.running
    finally:
        broken.cleanup()
