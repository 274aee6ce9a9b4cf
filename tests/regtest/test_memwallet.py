"""The in-process wallet: its coins, funding with or without change, signing what is its own."""

from __future__ import annotations

import pytest

from bitcoind_paychan.bitcoin.hashes import hash160
from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.script import p2pkh_script
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.errors import InsufficientFunds
from regtest.memchain import MemChain
from regtest.memwallet import MemWallet

BTC = 100_000_000


@pytest.fixture
def wallet() -> MemWallet:
    return MemWallet(MemChain())


def test_coins_leave_out_locked_and_mempool_spent_ones(wallet: MemWallet) -> None:
    first, second, third = wallet.receive(BTC, 2 * BTC, 3 * BTC)
    wallet.lock((first,))
    spend = wallet.sign(Transaction(2, (TxIn(second),), (TxOut(BTC, bytes(22)),)))
    assert wallet.chain.accept(spend) is None
    assert set(wallet.coins()) == {third}
    assert wallet.balance() == 3 * BTC
    wallet.release(((first.txid_hex, first.index),))
    assert set(wallet.coins()) == {first, third}


def test_funding_adds_change_unless_it_would_be_dust(wallet: MemWallet) -> None:
    coin, = wallet.receive(100_000)
    draft = Transaction(2, (), (TxOut(50_000, bytes(22)),))
    funded = wallet.fund(draft, 1_000)
    assert funded.inputs[0].prevout == coin and len(funded.outputs) == 2
    assert wallet.locked == {coin}
    wallet.release(((coin.txid_hex, coin.index),))
    nearly_all = Transaction(2, (), (TxOut(99_700, bytes(22)),))  # 300 sat: fee, no change
    funded = wallet.fund(nearly_all, 1_000)
    assert funded.outputs == nearly_all.outputs
    assert wallet.chain.test_accept(funded) is None
    with pytest.raises(InsufficientFunds, match="add funds"):
        wallet.fund(Transaction(2, (), (TxOut(BTC, bytes(22)),)), 1_000)


def test_signing_covers_its_own_legacy_and_segwit_inputs_only(wallet: MemWallet) -> None:
    key = PrivateKey.generate()
    wallet.watch_key(key, ("pkh",))
    legacy = OutPoint(wallet.chain.mine(payouts=[
        TxOut(BTC, p2pkh_script(hash160(key.pub.data)))])[0].txs[0].txid, 0)
    segwit, = wallet.receive(BTC)
    foreign = OutPoint(bytes(range(32)), 0)
    signed = wallet.sign(Transaction(2, (TxIn(legacy), TxIn(segwit), TxIn(foreign)),
                                     (TxOut(BTC, bytes(22)),)))
    assert signed.inputs[0].script_sig and signed.inputs[1].witness
    assert not signed.inputs[2].script_sig and not signed.inputs[2].witness
    ours = Transaction(2, signed.inputs[:2], signed.outputs)
    assert wallet.chain.test_accept(wallet.sign(ours)) is None
