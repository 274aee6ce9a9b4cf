"""The node adapter against real regtest nodes: every operation and every error."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from bitcoind_paychan.bitcoin.script import p2wsh_script
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.errors import (
    InsufficientFunds,
    NodeAuthError,
    NodeError,
    NodeUnreachable,
    TransactionRejected,
    WalletNotLoaded,
    WrongNetwork,
)
from bitcoind_paychan.node import AsyncBitcoind, Bitcoind, NodeConfig, to_btc, to_sat
from regtest.node import RegtestNode
from tests.conftest import config_for

SCRIPT = p2wsh_script(bytes(range(32)))


def test_amount_conversions_are_exact() -> None:
    assert to_sat(Decimal("0.00000001")) == 1
    assert to_sat(Decimal("20999999.97690000")) == 2099999997690000
    assert to_btc(123456789) == "1.23456789"
    assert to_sat(to_btc(2099999997690000)) == 2099999997690000


def test_tip_matches_the_node(bitcoind: Bitcoind, node: RegtestNode) -> None:
    node.mine(3)
    tip = bitcoind.check()
    height, block_hash = node.tip()
    assert (tip.height, tip.block_hash) == (height, block_hash)
    assert tip.median_time == node.rpc("getblockchaininfo")["mediantime"]
    assert tip.time >= tip.median_time


def test_fee_rate_has_a_floor(bitcoind: Bitcoind) -> None:
    # Fresh regtest has no fee history: the estimate falls back to the floor or relay minimum.
    assert bitcoind.fee_rate(6, floor=1000) == 1000
    assert bitcoind.fee_rate(6, floor=7777) == 7777


def test_fee_rate_never_below_the_nodes_relay_minimum() -> None:
    with RegtestNode(extra_args=("-minrelaytxfee=0.00005",)) as node:
        assert Bitcoind(config_for(node)).fee_rate(6, floor=1000) == 5000


def test_fund_builds_a_signed_segwit_tx_without_broadcasting(
    bitcoind: Bitcoind, node: RegtestNode
) -> None:
    funded = bitcoind.fund(SCRIPT, 1_000_000, fee_rate=2000)
    assert funded.output_index == 0
    assert funded.tx.outputs[0] == TxOut(1_000_000, SCRIPT)
    assert all(txin.witness for txin in funded.tx.inputs)
    assert bitcoind.transaction(funded.txid) is None  # not broadcast
    locked = {(c["txid"], c["vout"]) for c in node.wallet_rpc("listlockunspent")}
    assert set(funded.inputs) <= locked
    acceptance = bitcoind.test_accept(funded.tx)
    assert acceptance.allowed, acceptance.reason
    assert acceptance.fee == funded.fee
    assert acceptance.vsize is not None
    assert funded.fee == pytest.approx(2 * acceptance.vsize, abs=2)  # 2 sat/vB as asked
    bitcoind.release(funded.inputs)
    assert node.wallet_rpc("listlockunspent") == []


def test_fund_more_than_the_wallet_has(bitcoind: Bitcoind) -> None:
    with pytest.raises(InsufficientFunds, match="add funds"):
        bitcoind.fund(SCRIPT, 10_000 * 100_000_000)


def test_broadcast_and_look_up(bitcoind: Bitcoind, node: RegtestNode) -> None:
    funded = bitcoind.fund(SCRIPT, 500_000)
    assert bitcoind.broadcast(funded.tx) == funded.txid
    assert bitcoind.broadcast(funded.tx) == funded.txid  # already in the mempool: success
    status = bitcoind.transaction(funded.txid)
    assert status is not None and status.confirmations == 0 and status.block_height is None
    assert status.tx == funded.tx
    (block,) = node.mine(1)
    status = bitcoind.transaction(funded.txid)
    assert status is not None
    assert (status.confirmations, status.block_hash, status.block_height) == (
        1,
        block,
        node.tip()[0],
    )
    assert bitcoind.broadcast(funded.tx) == funded.txid  # already in the chain: success
    assert bitcoind.transaction("00" * 32) is None


def test_is_spent(bitcoind: Bitcoind, node: RegtestNode) -> None:
    address = node.new_address()
    txid = node.wallet_rpc("sendtoaddress", address, 1)
    vout = next(
        o["n"]
        for o in node.rpc("getrawtransaction", txid, True)["vout"]
        if o["scriptPubKey"].get("address") == address
    )
    assert bitcoind.is_spent(txid, vout) is False
    node.wallet_rpc("sendall", [node.new_address()], None, None, None,
                    {"inputs": [{"txid": txid, "vout": vout}]})
    assert bitcoind.is_spent(txid, vout) is True
    with pytest.raises(NodeError, match="does not know"):
        bitcoind.is_spent("11" * 32, 0)


def test_spenders_of_many_outpoints_in_one_call(bitcoind: Bitcoind, node: RegtestNode) -> None:
    addresses = [node.new_address() for _ in range(3)]
    txid = node.wallet_rpc("sendmany", "", {a: 1 for a in addresses})
    node.mine(1)
    outs = [(txid, o["n"]) for o in node.rpc("getrawtransaction", txid, True)["vout"]
            if o["scriptPubKey"].get("address") in addresses]
    spend = node.wallet_rpc("sendall", [node.new_address()], None, None, None,
                            {"inputs": [{"txid": t, "vout": n} for t, n in outs[:2]]})["txid"]
    found = bitcoind.spenders([*outs, ("11" * 32, 0)])
    assert set(found) == set(outs[:2])
    assert {tx.txid_hex for tx in found.values()} == {spend}
    assert bitcoind.spender(*outs[0]) == found[outs[0]]
    assert bitcoind.spender(*outs[2]) is None


def test_payout_script_belongs_to_the_wallet(bitcoind: Bitcoind, node: RegtestNode) -> None:
    script = bitcoind.payout_script()
    assert script[:2] == b"\x00\x14" and len(script) == 22
    address = node.rpc("decodescript", script.hex())["address"]
    assert node.wallet_rpc("getaddressinfo", address)["ismine"]
    assert bitcoind.payout_script() != script
    assert bitcoind.owns_script(script)
    assert not bitcoind.owns_script(b"\x00\x14" + bytes(20))  # an address, not ours
    assert not bitcoind.owns_script(b"\x6a\x01\x00")  # no address at all (OP_RETURN)


def test_invalid_tx_is_rejected_with_the_nodes_reason(bitcoind: Bitcoind) -> None:
    bogus = Transaction(
        2, (TxIn(OutPoint(b"\x11" * 32, 0), b"", 0xFFFFFFFF),), (TxOut(1000, SCRIPT),), 0
    )
    acceptance = bitcoind.test_accept(bogus)
    assert not acceptance.allowed and acceptance.reason == "missing-inputs"
    with pytest.raises(TransactionRejected) as caught:
        bitcoind.broadcast(bogus)
    assert "bad-txns-inputs-missingorspent" in caught.value.reason
    assert bogus.txid_hex in str(caught.value)


def test_check_acceptable_raises_the_nodes_refusal_and_accepts_a_known_tx(
    bitcoind: Bitcoind,
) -> None:
    bogus = Transaction(
        2, (TxIn(OutPoint(b"\x11" * 32, 0), b"", 0xFFFFFFFF),), (TxOut(1000, SCRIPT),), 0
    )
    with pytest.raises(TransactionRejected) as caught:
        bitcoind.check_acceptable(bogus)
    assert caught.value.reason == "missing-inputs" and bogus.txid_hex in str(caught.value)
    funded = bitcoind.fund(SCRIPT, 1_000_000, fee_rate=2000)
    assert bitcoind.check_acceptable(funded.tx).allowed
    bitcoind.broadcast(funded.tx)
    assert bitcoind.check_acceptable(funded.tx).reason == "txn-already-in-mempool"


def test_check_acceptable_on_a_stopped_node_is_unreachable(node: RegtestNode) -> None:
    bitcoind = Bitcoind(config_for(node))
    node.stop()
    with pytest.raises(NodeUnreachable, match="does not answer"):
        bitcoind.check_acceptable(Transaction(2, (), (TxOut(1000, SCRIPT),), 0))


def test_bare_multisig_refusal_says_what_to_do(bitcoind: Bitcoind) -> None:
    from bitcoind_paychan.bitcoin.keys import PrivateKey
    from bitcoind_paychan.bitcoin.script import multisig_2of2_script

    keys = [PrivateKey.generate().pub.data for _ in range(2)]
    funded = bitcoind.fund(multisig_2of2_script(*keys), 100_000)
    with pytest.raises(TransactionRejected, match="Bitcoin Core does"):
        bitcoind.broadcast(funded.tx)


def test_wrong_password(node: RegtestNode) -> None:
    adapter = Bitcoind(NodeConfig(url=node.rpc_url, user="__cookie__", password="wrong"))
    with pytest.raises(NodeAuthError, match="refused the credentials"):
        adapter.tip()


def test_unreadable_cookie(node: RegtestNode, tmp_path: Path) -> None:
    with pytest.raises(NodeAuthError, match="cannot read the bitcoind cookie"):
        Bitcoind(config_for(node, cookie_file=tmp_path / "missing"))


def test_stopped_node_is_unreachable(node: RegtestNode) -> None:
    adapter = Bitcoind(config_for(node))
    adapter.tip()
    node.stop()
    with pytest.raises(NodeUnreachable, match="does not answer"):
        adapter.tip()


def test_cookie_is_read_again_after_a_restart(node: RegtestNode) -> None:
    adapter = Bitcoind(config_for(node))
    before = adapter.tip()
    node.restart(same_ports=True)  # bitcoind writes a new cookie
    assert adapter.tip().block_hash == before.block_hash


def test_node_on_another_chain() -> None:
    with RegtestNode(chain="signet", wallet=None) as signet:
        adapter = Bitcoind(
            NodeConfig(url=signet.rpc_url, chain="regtest", cookie_file=signet.cookie_path)
        )
        with pytest.raises(WrongNetwork, match="runs chain 'signet' but 'regtest'"):
            adapter.check()


def test_missing_wallet(node: RegtestNode) -> None:
    adapter = Bitcoind(config_for(node, wallet="nosuchwallet"))
    with pytest.raises(WalletNotLoaded, match="createwallet wallet_name=nosuchwallet "
                       "load_on_startup=true"):
        adapter.check()
    with pytest.raises(WalletNotLoaded):
        adapter.payout_script()


def test_shared_between_threads(bitcoind: Bitcoind, node: RegtestNode) -> None:
    expected = node.tip()
    results: list[tuple[int, str]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(25):
                tip = bitcoind.tip()
                results.append((tip.height, tip.block_hash))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [expected] * 200


def test_async_face(bitcoind: Bitcoind, node: RegtestNode) -> None:
    async def run() -> tuple[int, bytes]:
        adapter = AsyncBitcoind(bitcoind)
        tips = await asyncio.gather(*(adapter.tip() for _ in range(5)))
        return tips[0].height, await adapter.payout_script()

    height, script = asyncio.run(run())
    assert height == node.tip()[0]
    assert len(script) == 22
