"""Can the process settle? The rules (sans-IO), then the probe against a real regtest node."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bitcoind_paychan.node import Bitcoind
from bitcoind_paychan.node.health import NodeProbe, Reason, probe_node, settle_readiness
from regtest.node import RegtestNode
from tests.conftest import config_for

HEALTHY = NodeProbe(height=500)


@pytest.mark.parametrize(("probe", "oldest", "reason", "says"), [
    (HEALTHY, None, Reason.OK, "wallet is loaded and unlocked"),
    (replace(HEALTHY, prune_height=300), 300, Reason.OK, "chain is synced"),
    (NodeProbe(node_error="bitcoind does not answer"), None, Reason.NODE_UNREACHABLE,
     "does not answer"),
    (replace(HEALTHY, wallet_error="wallet 'x' is not loaded"), None,
     Reason.WALLET_NOT_LOADED, "not loaded"),
    (replace(HEALTHY, wallet_locked=True), None, Reason.WALLET_LOCKED, "walletpassphrase"),
    (replace(HEALTHY, initial_block_download=True), None, Reason.INITIAL_BLOCK_DOWNLOAD,
     "initial block download"),
    (replace(HEALTHY, prune_height=300), 299, Reason.BLOCKS_PRUNED, "pruned block 299"),
    # The first rule broken is the reason.
    (replace(HEALTHY, wallet_error="not loaded", initial_block_download=True), None,
     Reason.WALLET_NOT_LOADED, "not loaded"),
])
def test_the_first_rule_broken_is_the_reason(probe: NodeProbe, oldest: int | None,
                                             reason: Reason, says: str) -> None:
    readiness = settle_readiness(probe, oldest)
    assert readiness.reason is reason and says in readiness.detail
    assert readiness.can_settle is (reason is Reason.OK)
    assert readiness.as_dict()["reason"] == reason.value


def test_the_probe_loads_an_unloaded_wallet_and_names_one_it_cannot(node: RegtestNode) -> None:
    adapter = Bitcoind(config_for(node))
    assert settle_readiness(probe_node(adapter), None).can_settle
    node.rpc("unloadwallet", node.wallet)
    assert settle_readiness(probe_node(adapter), None).can_settle  # loaded it again
    node.rpc("unloadwallet", node.wallet)
    assert node.wallet is not None
    wallets = node.datadir / node.chain / "wallets"
    (wallets / node.wallet).rename(wallets / "elsewhere")
    readiness = settle_readiness(probe_node(adapter), None)
    assert readiness.reason is Reason.WALLET_NOT_LOADED
    assert "load_on_startup=true" in readiness.detail
    (wallets / "elsewhere").rename(wallets / node.wallet)
    node.stop()
    probe = probe_node(adapter)
    assert settle_readiness(probe, None).reason is Reason.NODE_UNREACHABLE


def test_a_locked_wallet_cannot_settle(node: RegtestNode) -> None:
    node.rpc("createwallet", "locked", False, False, "passphrase")
    adapter = Bitcoind(config_for(node, wallet="locked"))
    assert settle_readiness(probe_node(adapter), None).reason is Reason.WALLET_LOCKED
    node.rpc("walletpassphrase", "passphrase", 60, wallet="locked")
    assert settle_readiness(probe_node(adapter), None).can_settle
